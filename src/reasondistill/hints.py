""""Did you mean ...?" for the command line and the config: one matcher, one argparse parser.

Why: a misspelled verb, option or config key should be answered with the likely intended name,
not only with "invalid". Every ``reasondistill`` verb (including those that parse their own
arguments: serve, score, compare, ingest, export, merge) builds its parser from
:class:`HintingParser`, and the config's "Extra inputs are not permitted" errors use
:func:`did_you_mean` on the field names at that place. Standard library only, so it is cheap to
import from ``--help``.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import Iterable


def did_you_mean(word: str, names: Iterable[str]) -> str:
    """``"did you mean 'X'?"`` for the closest of ``names`` to ``word``, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(names), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


class HintingParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors suggest the closest option or choice, and which
    can report an unrecognized argument with its own (the verb's) usage."""

    seen: list[str] = []  # the arguments of the last parse, for hints

    def parse_known_args(self, args=None, namespace=None):
        self.seen = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def option_names(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings]

    def reject(self, extra: list[str]) -> None:
        """Exit 2 with this parser's usage: ``extra`` were not understood."""
        self.error(f"unrecognized arguments: {' '.join(extra)}")

    def error(self, message: str):
        hints = [h for h in (self._choice_hint(message), *self._option_hints()) if h]
        super().error("; ".join([message, *hints]))

    def _option_hints(self) -> list[str]:
        """A hint for each option given that is neither an option nor an abbreviation of one
        (an error about a missing ``--format`` may be caused by a typed ``--formt``)."""
        names = self.option_names()
        given = dict.fromkeys(w.split("=")[0] for w in self.seen if w.startswith("-") and w != "-" and w != "--"
                              and not w[1:2].isdigit() and not w[1:2] == ".")
        return [did_you_mean(w, names) for w in given if not any(n.startswith(w) for n in names)]

    @staticmethod
    def _choice_hint(message: str) -> str:
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        return did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2))) if choice else ""
