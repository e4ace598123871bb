"""The run directory: where every stage reads and writes, and how a stage knows it is up to date.

Why: a run is a folder a person can open, copy and re-run. Each stage records a fingerprint of its
config section and the content hashes of its input files; when neither changed and its outputs
are intact, the stage is skipped. Change one stage's config and it re-runs, and because its outputs
then change, so does everything downstream. ``manifest.json`` holds library versions, seeds, the
git commit and, per stage, the hashes of inputs and outputs.

    rd = RunDir("runs/demo")
    rd.run_stage("curate", cfg.curate, inputs=[...], outputs=[...], fn=lambda: ...)

Under several processes (torchrun), only the main process writes here: a stage runs on the main
process alone while the others wait for its result, except stages run with ``every_rank`` (training),
which every process runs after the main process has decided whether they are current.

One writer at a time: a stage runs only while its process holds the run directory's writer lock
(``.stages/writer.lock``, an flock the kernel drops when the process dies, so a killed run never
leaves it stuck). A second ``run``/``generate``/``train`` on the same directory is refused with a
``RunDirBusy`` error naming the holder; processes the writer starts itself (``train_workers``
children) share its lock through ``WRITER_ENV``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from reasondistill.errors import UserError
from reasondistill.distributed import barrier, broadcast, is_main_process, world_size
from reasondistill.redact import command_line
from reasondistill.layout import Layout
from reasondistill.records import file_sha256, write_json

# Set by a writer for the processes it starts (train_workers): they write under its lock.
WRITER_ENV = "REASONDISTILL_RUN_WRITER"

LIBRARIES = ("reasondistill", "torch", "transformers", "accelerate", "tokenizers", "safetensors", "pydantic", "numpy")


def jsonable(obj: Any) -> Any:
    """Plain JSON data from configs (pydantic models, nested in dicts/lists) and paths."""
    return json.loads(json.dumps(obj, default=_default))


def _default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot record {type(obj).__name__} in a stage config")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.exists() else []


class RunDir(Layout):
    """A run directory: its layout (:class:`~reasondistill.layout.Layout`) plus stage bookkeeping."""

    def __init__(self, root: str | Path):
        super().__init__(root)
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root}: run_dir is a file, not a directory; choose another run_dir")
        self.root.mkdir(parents=True, exist_ok=True)
        self._hash_cache_path = self.stages_dir / "hash-cache.json"
        self._hash_cache: dict[str, list] | None = None
        self.main = is_main_process()  # only the main process writes bookkeeping (several under torchrun)
        self._solo = 0  # > 0 while the main process runs a stage alone: nested stages need no collectives
        self.lock = WriterLock(self.stages_dir / "writer.lock")

    def writer(self) -> "WriterLock":
        """``with rd.writer():`` holds the writer lock (re-entrant; other ranks under torchrun skip it:
        their main process holds it for the launch)."""
        return self.lock if self.main else _NO_LOCK

    def need(self, *paths: Path, stage: str) -> None:
        """Raise :class:`StageInputMissing` for the first of ``paths`` missing, naming the ``stage`` that writes it."""
        for p in paths:
            if not p.exists():
                raise StageInputMissing(f"{p} not found: run `reasondistill {stage} {self.root}` first")

    # -- hashing -------------------------------------------------------------------------------
    def file_hash(self, path: Path) -> str:
        """sha256 of a file's content, cached by (size, mtime) so big checkpoints hash once."""
        if self._hash_cache is None:
            try:
                self._hash_cache = json.loads(self._hash_cache_path.read_text())
            except (OSError, ValueError):
                self._hash_cache = {}
        st = path.stat()
        key = str(path.resolve())
        hit = self._hash_cache.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = file_sha256(path)
        self._hash_cache[key] = [st.st_size, st.st_mtime_ns, digest]
        if self.main:
            write_json(self._hash_cache_path, self._hash_cache)
        return digest

    def hashes(self, paths: list[Path]) -> dict[str, str]:
        """Content hashes of files (and of every file in directories), keyed by relative path."""
        out = {}
        for p in paths:
            for f in _files(Path(p)):
                if f.name.endswith((".tmp", ".torn")) or "/tb/" in str(f):
                    continue
                out[self._rel(f)] = self.file_hash(f)
        return out

    def _rel(self, p: Path) -> str:
        try:
            return str(p.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(p)

    def fingerprint(self, config: Any, inputs: list[Path], portable: bool = True) -> str:
        """A stage's fingerprint: its config and its inputs' content. ``portable``: a config value
        naming a path inside this run directory (a student's ``final/``) counts relative to it, so
        the same run reached as ``runs/x``, ``./runs/x`` or an absolute path (or moved) is unchanged."""
        config = jsonable(config)
        blob = json.dumps({"config": self._portable(config) if portable else config, "inputs": self.hashes(inputs)},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _portable(self, obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: self._portable(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._portable(v) for v in obj]
        if isinstance(obj, str) and (obj == str(self.root) or obj.startswith(str(self.root) + os.sep)):
            return "<run_dir>" + obj[len(str(self.root)):]
        return obj

    # -- stage bookkeeping ---------------------------------------------------------------------
    def _state_path(self, name: str) -> Path:
        return self.stages_dir / f"{name.replace(':', '--')}.json"

    def stage_state(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._state_path(name).read_text())
        except (OSError, ValueError):
            return None

    def is_current(self, name: str, fp: str, outputs: list[Path]) -> bool:
        state = self.stage_state(name)
        if not state or state.get("fingerprint") != fp:
            return False
        if not all(Path(o).exists() for o in outputs):
            return False
        return self.hashes(outputs) == state.get("outputs")

    def run_stage(self, name: str, config: Any, inputs: list[Path], outputs: list[Path],
                  fn: Callable[[str], Any], force: bool = False, log: Callable[[str], None] = print,
                  every_rank: bool = False) -> Any:
        """Run ``fn(fingerprint)`` unless the stage is current; record hashes and the result.

        With several processes: an ``every_rank`` stage runs ``fn`` on every process (all follow the
        main process's skip-or-run decision and fingerprint); any other stage runs on the main
        process only, and the others wait for it and return its result.
        """
        shared = world_size() > 1 and not self._solo
        if shared and not every_rank:
            result = None
            if self.main:
                self._solo += 1
                try:
                    result = self.run_stage(name, config, inputs, outputs, fn, force, log)
                finally:
                    self._solo -= 1
            return broadcast(result)
        fp, current = None, False
        if self.main:
            fp = self.fingerprint(config, inputs)
            # a stage recorded before fingerprints were portable (the run directory's path as typed then)
            current = not force and (self.is_current(name, fp, outputs) or
                                     self.is_current(name, self.fingerprint(config, inputs, portable=False), outputs))
        if shared:
            fp, current = broadcast((fp, current))
        say = log if self.main else (lambda _msg: None)
        if current:
            say(f"[skip] {name}: inputs and config unchanged")
            return (self.stage_state(name) or {}).get("result")
        say(f"[run ] {name}")
        with self.writer():
            return self._run_and_record(name, config, inputs, outputs, fn, fp)

    def _run_and_record(self, name, config, inputs, outputs, fn, fp) -> Any:
        t0 = time.perf_counter()
        result = fn(fp)
        if self.main:
            state = {"stage": name, "fingerprint": fp, "config": jsonable(config),
                     "inputs": self.hashes(inputs), "outputs": self.hashes(outputs),
                     "seconds": round(time.perf_counter() - t0, 2),
                     "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "result": result}
            write_json(self._state_path(name), state)
            self.update_manifest(stage=state)
        return result

    # -- what was skipped and why (shown in the report) ----------------------------------------
    def skipped(self) -> dict[str, str]:
        """``{stage: reason}`` for every stage that had nothing to work on in its last run."""
        try:
            return json.loads(self.skipped_path.read_text())
        except (OSError, ValueError):
            return {}

    def mark_skipped(self, stage: str, reason: str | None, log: Callable[[str], None] = print) -> None:
        """Record (``reason``) or clear (None) why ``stage`` did nothing; a recorded skip is logged
        as one line ``[skip] stage: reason``."""
        if reason is not None:
            log(f"[skip] {stage}: {reason}")
        if not self.main:
            return
        current = self.skipped()
        if reason is None and stage not in current:
            return
        if reason is None:
            current.pop(stage)
        else:
            current[stage] = reason
        write_json(self.skipped_path, current)

    def restart_if_stale(self, output: Path, progress_file: Path, fp: str, log: Callable[[str], None] = print,
                         also: tuple[str, ...] = (), rows: tuple[str, dict[str, str]] | None = None) -> None:
        """Before a resumable stage (re)writes ``output``: keep what an earlier config made aside (see
        :func:`archive`), and record ``fp`` in ``progress_file`` so the next start knows what it resumes.
        ``also``: older fingerprints of the same config (its output is resumed, not set aside).
        ``rows``: (the fingerprint of the settings alone, {problem id: content hash}) for a JSONL output
        of one line per problem and sample: when only the problems changed, the lines of the unchanged
        problems are kept (the whole file is still set aside first), so that asking for more problems, or
        fixing one, does not sample the others again.
        Only the main process touches the files; under several processes the others wait here."""
        if self.main:
            progress = {"fingerprint": fp} | ({"settings": rows[0], "problems": rows[1]} if rows else {})
            if output.exists():
                try:
                    old = json.loads(progress_file.read_text())
                except (OSError, ValueError):
                    old = {}
                if old.get("fingerprint") != fp and old.get("fingerprint") not in also:
                    same_settings = rows is not None and old.get("settings") == rows[0] and old.get("problems")
                    if not same_settings:
                        archive(output, log)
                    else:
                        _keep_unchanged(output, old["problems"], rows[1], log)
            write_json(progress_file, progress)
        if not self._solo:
            barrier()

    # -- manifest ------------------------------------------------------------------------------
    def update_manifest(self, seeds: dict[str, Any] | None = None, stage: dict[str, Any] | None = None) -> None:
        if not self.main:
            return
        path = self.manifest
        env = environment()
        with file_lock(self.stages_dir / "manifest.lock"):  # students may train in parallel processes
            try:
                manifest = json.loads(path.read_text())
            except (OSError, ValueError):
                manifest = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            manifest["environment"] = env
            if seeds:
                manifest["seeds"] = seeds
            if stage:
                manifest.setdefault("stages", {})[stage["stage"]] = {
                    k: stage[k] for k in ("fingerprint", "inputs", "outputs", "seconds", "finished_at")}
            write_json(path, manifest)


class StageInputMissing(FileNotFoundError):
    """A stage's input file is missing: the stage that writes it has not run."""


class RunDirBusy(UserError):
    """Another process is writing to this run directory."""


class WriterLock:
    """The run directory's single-writer lock: an exclusive, non-blocking flock on ``path``, held
    from the outermost ``with`` to its end (re-entrant within a process). The file records the
    holder (pid, command, start time, a token) for the message a refused process prints; a process
    whose ``WRITER_ENV`` carries the holder's token is one the holder started and may write."""

    def __init__(self, path: Path):
        self.path, self.depth, self.token, self._fh = path, 0, None, None

    def __enter__(self) -> "WriterLock":
        if self.depth == 0:
            self._acquire()
        self.depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self.depth -= 1
        if self.depth > 0:
            return
        if self._fh is not None:  # a process the holder started (WRITER_ENV) holds no file of its own
            import fcntl

            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
        self._fh = self.token = None

    def _acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = _holder(fh.read())
            fh.close()
            if holder.get("token") and holder["token"] == os.environ.get(WRITER_ENV):
                self.token = holder["token"]  # started by the holder: writes under its lock
                return
            raise RunDirBusy(f"{self.path.parent.parent}: in use by another reasondistill process "
                             f"(pid {holder.get('pid', '?')}: {holder.get('command', '?')}, since "
                             f"{holder.get('since', '?')}); wait for it to finish or stop it, then run again") from None
        self.token = secrets.token_hex(8)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "command": command_line(["reasondistill", *sys.argv[1:]])[:200],
                             "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "token": self.token}))
        fh.flush()
        self._fh = fh


def _holder(text: str) -> dict[str, Any]:
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


class _NoLock:
    def __enter__(self) -> "_NoLock":
        return self

    def __exit__(self, *exc) -> None:
        return None


_NO_LOCK = _NoLock()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) held for a read-modify-write of a shared file."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def archive(path: Path, log: Callable[[str], None] | None = print) -> Path:
    """Move an output made under another config aside (``<name>.stale-N``) instead of deleting it."""
    i = 1
    while path.with_name(f"{path.name}.stale-{i}").exists():
        i += 1
    dest = path.with_name(f"{path.name}.stale-{i}")
    path.rename(dest)
    if log is not None:
        log(f"       config changed: kept the previous output as {dest}")
    return dest


def _keep_unchanged(output: Path, old: dict[str, str], new: dict[str, str], log: Callable[[str], None]) -> None:
    """Set ``output`` aside and write back the lines of the problems whose content hash is the same
    in ``old`` and ``new`` (a line names its problem in ``problem_id``); a torn last line is dropped."""
    keep = {pid for pid, h in new.items() if old.get(pid) == h}
    dest = archive(output, None)
    kept = 0
    with open(dest, encoding="utf-8") as src, open(output, "w", encoding="utf-8") as out:
        for line in src:
            try:
                pid = json.loads(line).get("problem_id")
            except ValueError:
                continue
            if pid in keep:
                out.write(line if line.endswith("\n") else line + "\n")
                kept += 1
        out.flush()
        os.fsync(out.fileno())
    added, gone = len(new.keys() - old.keys()), len(old.keys() - keep)
    log(f"       the problems changed ({added} new, {gone} removed or edited), not the settings: kept {kept} "
        f"lines of the {len(keep)} unchanged problems; the previous output is kept as {dest}")


def environment() -> dict[str, Any]:
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "libraries": versions,
            "git_commit": _git_commit(), "cpu_count": os.cpu_count()}


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None
