"""Multiple-choice answers: which option did the completion pick, and is it the reference one?

Why: models state a choice in many ways ("The answer is (B)", "B) 42", "**C**", "Answer: D",
``\\boxed{A}``, or the option's text instead of its letter). Reading them all the same way keeps
curation and evaluation honest; a completion that picks nothing is "unparseable", not "wrong".

    from reasondistill.verify.choice import extract_choice, verify_choice
    extract_choice("so the answer is (B).")                      # -> "B"
    verify_choice("C", "I pick Paris", options=["Rome", "Oslo", "Paris"])
    # -> Check(verdict="correct", reason="match", predicted="C")

Letters are case-sensitive capitals so the article "a" is never read as option A, except in a
completion that is nothing but one letter ("b", "(c)"). A reference may be a letter, an option's
text or a 0-based index (as the ``choice`` task loader reads it). A bare number as the *prediction*
is ambiguous (the option "2", index 2, or the second option?): it is an option whose text is that
number, else nothing, unless ``number_is_index`` (``reasondistill score``, whose answer fields
come from harnesses that store the picked option's index, 0-based like the reference).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

from reasondistill.checks import Check

MATCH = "match"
MISMATCH = "mismatch"
NO_ANSWER = "no answer found"
GOLD_PARSE_FAILURE = "gold parse failure"

Options = Sequence[str] | Mapping[str, str] | None


def option_letters(options: Options = None, letters: str | None = None) -> str:
    """The valid letters: given, else one per option, else A-D."""
    if letters:
        return letters
    if isinstance(options, Mapping):
        return "".join(k.strip().upper() for k in options)
    if options:
        return string.ascii_uppercase[:len(options)]
    return "ABCD"


def _option_texts(options: Options, letters: str) -> dict[str, str]:
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return {k.strip().upper(): str(v) for k, v in options.items()}
    return dict(zip(letters, map(str, options), strict=False))


def _patterns(letters: str) -> list[re.Pattern]:
    """Ways of stating a letter, strongest first; each captures the letter as group 1."""
    L = f"[{re.escape(letters)}]"
    wrap_open, wrap_close = r"[\s\*_\(\[\{:]*", r"(?![A-Za-z0-9])"
    return [
        re.compile(rf"\\boxed\{{(?:\\text(?:bf)?\{{)?\(?({L})\)?\}}"),
        re.compile(rf"(?i:answer|final|option|choice)(?:\s+(?i:is|would be|should be))?\s*[:=]?"
                   rf"(?:\s*(?i:option|choice))?{wrap_open}({L}){wrap_close}"),
        re.compile(rf"(?i:I (?:choose|pick|select|go with))(?:\s+(?i:option|choice))?{wrap_open}({L}){wrap_close}"),
        re.compile(rf"\*\*\(?({L})\)?[\.\):]?\*\*"),
    ]


def _last_line_choice(text: str, letters: str) -> str | None:
    """A letter opening the final line: "B", "(B)", "B) 42", "B. 42", "**C**"."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    m = re.match(rf"^[\*_\s]*\(?([{re.escape(letters)}])(?:\)|\.|:|\*|$)", lines[-1])
    return m.group(1) if m else None


_LONE_LETTER = re.compile(r"[\*_\(\[\s]*([A-Za-z])[\*_\)\]\.:\s]*")


def _norm(s: str) -> str:
    """Lower case, punctuation to spaces (a decimal point stays), single spaces."""
    s = re.sub(r"[^\w\s.\-]|\.(?!\d)", " ", s.lower())
    return re.sub(r"\s+", " ", s).strip()


def _choice_by_text(text: str, texts: dict[str, str]) -> str | None:
    """The one option whose text occurs in ``text`` (whole words); None if none or several."""
    hay = f" {_norm(text)} "
    hits = {k for k, v in texts.items() if _norm(v) and f" {_norm(v)} " in hay}
    # drop options contained in a longer hit, e.g. "4" inside "4 apples"
    hits = {k for k in hits if not any(k != o and f" {_norm(texts[k])} " in f" {_norm(texts[o])} " for o in hits)}
    return hits.pop() if len(hits) == 1 else None


def extract_choice(text: str, options: Options = None, letters: str | None = None, *,
                   number_is_index: bool = False) -> str | None:
    """The chosen option's letter, or None when the completion does not clearly pick one.

    Tried in order: a completion that is one letter in either case ("b", "(c)"); ``\\boxed{B}``;
    "answer is (B)" / "Answer: D" / "the correct option is C"; "I choose B"; a bold "**C**"; a
    letter opening the last line; the text of exactly one option (in the stated answer if there
    is one, else in the last line); if ``number_is_index``, a completion that is one whole number
    is the option at that 0-based index.
    """
    letters = option_letters(options, letters)
    stripped = text.strip()
    alone = _LONE_LETTER.fullmatch(stripped)
    if alone and alone.group(1).upper() in letters:
        return alone.group(1).upper()
    for pattern in _patterns(letters):
        found = pattern.findall(stripped)
        if found:
            return found[-1]
    by_line = _last_line_choice(stripped, letters)
    if by_line:
        return by_line
    texts = _option_texts(options, letters)
    if texts and stripped:
        said = re.findall(r"(?i:answer)(?:\s+is)?\s*[:=]?\s*([^\n]+)", stripped)
        tail = said[-1] if said else stripped.splitlines()[-1]
        by_text = _choice_by_text(tail, texts)
        if by_text:
            return by_text
    if number_is_index and stripped.isdigit() and int(stripped) < len(letters):
        return letters[int(stripped)]
    return None


def gold_choice(gold: str | int, options: Options = None, letters: str | None = None) -> str | None:
    """The reference letter from a letter ("B", "(B)"), an option's text, or a 0-based index (an
    int, or digits that are no option's text), as the ``choice`` task loader reads it."""
    letters = option_letters(options, letters)
    if isinstance(gold, int) and not isinstance(gold, bool):
        return letters[gold] if 0 <= gold < len(letters) else None
    g = str(gold).strip().strip("()[]*. ").strip()
    if len(g) == 1 and g.upper() in letters:
        return g.upper()
    texts = _option_texts(options, letters)
    exact = [k for k, v in texts.items() if _norm(v) == _norm(g)]
    if len(exact) == 1:
        return exact[0]
    g = str(gold).strip()
    return letters[int(g)] if g.isdigit() and int(g) < len(letters) else None


def verify_choice(gold: str | int, completion: str, options: Options = None,
                  letters: str | None = None, *, number_is_index: bool = False) -> Check:
    """Judge a multiple-choice completion; ``predicted`` is the letter it chose."""
    want = gold_choice(gold, options, letters)
    if want is None:
        return Check("unparseable", GOLD_PARSE_FAILURE, None)
    got = extract_choice(completion, options, letters, number_is_index=number_is_index)
    if got is None:
        return Check("unparseable", NO_ANSWER, None)
    return Check("correct", MATCH, got) if got == want else Check("wrong", MISMATCH, got)


def check_item(item: tuple) -> Check:
    """Pool entry point: ``(gold, completion[, options[, number_is_index]])`` -> Check."""
    gold, completion, *rest = item
    return verify_choice(gold, completion, rest[0] if rest else None,
                         number_is_index=rest[1] if len(rest) > 1 else False)
