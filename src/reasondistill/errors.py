"""How every ``reasondistill`` verb ends on an error: a user's mistake is one line and exit code 2;
a bug is its traceback, one line saying it is a bug, and the file the traceback was saved to.

Why one module: each verb (``cli.py`` and the verbs that parse their own arguments: serve, score,
compare, ingest, export, merge) used to catch its own set of exceptions, and the sets drifted
apart. ``run_verb`` is the one place that decides what is the user's to fix (a config, a data file,
a path, a permission, a full disk, a corrupt file in the run directory, a missing model, a teacher
that refuses the key) and what is ours.

    return run_verb("curate", lambda: pipeline.curate() and 0, crash_dir=run_dir)
"""

from __future__ import annotations

import errno
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable


class UserError(Exception):
    """An error the user can fix; its message says what and where. The CLI prints it alone."""


def user_message(exc: BaseException) -> str | None:
    """The one line to print for an error the user can fix, else None (a bug)."""
    if isinstance(exc, (UserError, ValueError)):  # ConfigError and RecordError are ValueErrors
        if isinstance(exc, UnicodeDecodeError):
            return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8"
        return str(exc)
    if isinstance(exc, KeyError):
        return str(exc.args[0]) if exc.args else "a key is missing"
    if isinstance(exc, OSError):
        return _os_message(exc)
    if type(exc).__name__ == "SafetensorError":  # safetensors' own type: imported lazily by its users
        text = str(exc)
        if "No space left on device" in text or "os error 28" in text:  # failed writing, not reading
            return (f"no space left on the device (writing a .safetensors file: {text}); free some space and run "
                    "again: work done is kept (a checkpoint is written aside and only then renamed into place)")
        return f"a .safetensors file is corrupt or truncated ({exc}); delete it and re-run the stage that wrote it"
    return None


def _os_message(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device (writing{where}); free some space and run again: work done is kept"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied:{where} ({exc.strerror}); choose a writable run_dir or fix its permissions"
    if isinstance(exc, FileNotFoundError) and not exc.filename:
        return str(exc)  # our own messages: "...: no such config file or run directory"
    if exc.strerror:
        return f"{exc.strerror}:{where}" if where else exc.strerror
    return str(exc)


def run_verb(verb: str, fn: Callable[[], int], crash_dir: Callable[[], Path | None] = lambda: None) -> int:
    """Run a verb's body; map errors to exit codes (2: the user's to fix, 1: a bug, 130: Ctrl-C).
    ``crash_dir`` says where a bug's traceback is saved (the run directory when known)."""
    try:
        return fn()
    except KeyboardInterrupt:
        print(f"reasondistill {verb}: interrupted; what was done is kept (run again to resume)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted into the user's errors and ours right here
        message = user_message(exc)
        if message is not None:
            print(f"reasondistill {verb}: error: {message}", file=sys.stderr)
            return 2
        text = traceback.format_exc()
        print(text, file=sys.stderr, end="")
        saved = _save(text, crash_dir())
        print(f"reasondistill {verb}: internal error: this is a bug in reasondistill, not in your input; "
              f"please report it with the traceback" + (f" (saved to {saved})" if saved else ""), file=sys.stderr)
        return 1


def _save(text: str, where: Path | None) -> Path | None:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for folder in ([where] if where else []) + [Path(tempfile.gettempdir())]:
        path = Path(folder) / f"reasondistill-crash-{stamp}.log"
        try:
            path.write_text(text)
            return path
        except OSError:
            continue
    return None
