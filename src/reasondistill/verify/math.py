"""Math answers: find the final answer in a completion and check it against a reference.

Why: "correct" must mean the same thing in curation, evaluation and scoring, and a completion we
cannot read ("unparseable") must never be counted as a wrong one. Extraction is ours (``\\boxed{}``
with nested braces, GSM8K's ``#### N``, "the answer is …", optionally a text that is itself just
an answer or the last number; a final ``\\boxed{`` that never closes is "unparseable", not a
number read out of it); equivalence is math-verify's (``\\frac{1}{2}`` = 0.5,
``(3, \\frac{\\pi}{2})`` = ``\\left( 3, \\frac{\\pi}{2} \\right)``, ``1,234`` = 1234).

    from reasondistill.verify.math import verify_math
    verify_math("#### 1,234", "... so the total is \\boxed{1234}.")
    # -> Check(verdict="correct", reason="match", predicted="1234")

math-verify's own timeouts use ``signal.alarm``, which fails outside the main thread, so every
call here passes ``parsing_timeout=None``/``timeout_seconds=None``. A pathological answer (say
``2^{2^{2^{30}}}``) can then run for ever: every stage checks through
:mod:`reasondistill.verify.checker`, which runs these checks in worker processes that are killed
past the time limit, the item reported as ``Check("unparseable", "timeout")`` (see
``checks.failure_check``; ``verify.checker.verify_math_many`` for a plain list of pairs). Extraction here is
linear in the completion's length, so it is never the part that hangs.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from decimal import Decimal

from reasondistill.checks import OUT_OF_MEMORY, Check

# The reasons a Check from this module can carry (``Check.reason``).
MATCH = "match"
MISMATCH = "mismatch"
NO_ANSWER = "no answer found"
PARSE_FAILURE = "parse failure"
GOLD_PARSE_FAILURE = "gold parse failure"
TOO_DEEP = "too deeply nested"
UNCLOSED_BOXED = "unclosed \\boxed{"

# A text taken whole as its answer (``whole_answer``): one line of at most this many characters
# once cleaned, with no word of two or more letters except LaTeX commands (``\frac``, ``\pi``).
WHOLE_ANSWER_MAX_CHARS = 100
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_WORD = re.compile(r"[^\s$]+")
_HASHES = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|=|:)\s*:?\s*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_PLAIN_NUMBER = re.compile(r"[-+]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?")
_LEADING_NUMBER = re.compile(r"[-+]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?=\s+[A-Za-z])")
_SCIENTIFIC = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d{1,2}")  # 1e6, 2.5E-3 (math-verify reads e as Euler's)


@dataclass(frozen=True)
class Extracted:
    """An answer found in a completion and where it was found."""

    text: str
    source: str  # "boxed" | "hash" | "answer_is" | "last_number" | "whole"


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}`` (or ``\\fbox``), nested braces included.

    ``\\boxed 5`` (no braces) yields ``5``; an unclosed brace yields None.
    """
    matches = list(_BOXED.finditer(text))
    unclosed = len(text)  # an earlier group cannot close past a later one that never closes
    for m in reversed(matches):
        start = m.end()
        if start < len(text) and text[start] == "{":
            body = _balanced(text, start, unclosed)
            if body is not None:
                return body.strip()
            unclosed = start
        else:
            word = _WORD.match(text, start)
            if word:
                return word.group(0)
    return None


def final_box_is_unclosed(text: str) -> bool:
    """Does the last ``\\boxed{`` (or ``\\fbox{``) of ``text`` never close? A cut-off final answer."""
    last = None
    for last in _BOXED.finditer(text):
        pass
    if last is None or not text.startswith("{", last.end()):
        return False
    return _balanced(text, last.end()) is None


def whole_answer_text(text: str) -> str | None:
    """``text`` cleaned, if it is itself just an answer (``29``, ``$18.00``, ``x = 4``,
    ``\\frac{1}{2}``, ``12 apples``): one short line without words. Else None."""
    cleaned = clean_answer(text)
    if not cleaned or "\n" in cleaned or len(cleaned) > WHOLE_ANSWER_MAX_CHARS or _PROSE_WORD.search(cleaned):
        return None
    return cleaned


def _balanced(text: str, open_at: int, stop: int | None = None) -> str | None:
    """The text inside the brace group opening at ``open_at``; None if it never closes (before ``stop``)."""
    depth = 0
    i = open_at
    end = len(text) if stop is None else stop
    while i < end:
        ch = text[i]
        if ch == "\\":  # skip escaped characters such as \{ and \}
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i]
        i += 1
    return None


def strip_dollars(s: str) -> str:
    """``$…$`` / ``$$…$$`` unwrapped, in linear time: what ``re.sub(r"^\\$+(.*?)\\$+$", r"\\1", s)``
    gives (the regex backtracks cubically on a run of ``$``: 2,000 took 7.9 s).

    The text before an optional final newline must have no other newline (``.`` does not cross
    one), start and end with ``$`` and be at least two characters long; it loses all its leading
    and trailing ``$``.
    """
    body, tail = (s[:-1], "\n") if s.endswith("\n") else (s, "")
    if len(body) < 2 or body[0] != "$" or body[-1] != "$" or "\n" in body:
        return s
    return body.strip("$") + tail


def clean_answer(answer: str) -> str:
    """Strip the wrapping a model puts around an answer: markdown, ``$…$``, a final period.

    A plain number loses its currency sign and thousands separators (``$1,234.`` → ``1234``), and a
    number in scientific notation becomes a decimal (``2.5e-3`` → ``0.0025``).
    """
    s = answer.strip()
    for _ in range(3):  # peel nested wrappers, e.g. **$42$**.
        before = s
        s = s.strip().rstrip(".;,!").strip()
        s = re.sub(r"^\*\*(.*)\*\*$", r"\1", s)
        s = strip_dollars(s)
        s = re.sub(r"^\\\((.*)\\\)$|^\\\[(.*)\\\]$", lambda m: m.group(1) or m.group(2) or "", s)
        if s == before:
            break
    lead = _LEADING_NUMBER.match(s)
    if lead:  # "42 apples" -> "42"
        s = lead.group(0)
    if _PLAIN_NUMBER.fullmatch(s):
        s = s.replace(",", "").replace("$", "")
        if s.startswith("+"):
            s = s[1:]
    elif _SCIENTIFIC.fullmatch(s):  # a calculator's 1e6 is 1000000, not 1 x e x 6
        s = format(Decimal(s), "f").lstrip("+")
    return s


def extract_answer(text: str, *, last_number: bool = True, whole_answer: bool = False) -> Extracted | None:
    """Find the final answer of a completion; None when there is none.

    Tried in order: the last ``\\boxed{}``, the last ``#### …``, the last "the answer is …" /
    "Answer: …", (if ``whole_answer``) the whole text when it is just an answer (see
    :func:`whole_answer_text`; for a field that holds an extracted answer, as ``score`` reads), and
    (if ``last_number``) the last number in the text. None, whatever else the text holds, when its
    last ``\\boxed{`` never closes (:func:`final_box_is_unclosed`).
    """
    if final_box_is_unclosed(text):
        return None
    boxed = last_boxed(text)
    if boxed:
        return Extracted(clean_answer(boxed), "boxed")
    hashes = _HASHES.findall(text)
    if hashes and clean_answer(hashes[-1]):
        return Extracted(clean_answer(hashes[-1]), "hash")
    said = _ANSWER_IS.findall(text)
    if said and clean_answer(said[-1]):
        return Extracted(clean_answer(said[-1]), "answer_is")
    whole = whole_answer_text(text) if whole_answer else None
    if whole:
        return Extracted(whole, "whole")
    if last_number:
        numbers = _NUMBER.findall(text)
        if numbers:
            return Extracted(clean_answer(numbers[-1]), "last_number")
    return None


def gold_answer(gold: str) -> str | None:
    """The reference answer: after ``####`` or inside ``\\boxed{}`` if present, else the whole text."""
    found = extract_answer(gold, last_number=False)
    if found is not None and found.source in ("boxed", "hash"):
        return found.text
    cleaned = clean_answer(gold)
    return cleaned or None


def _math_verify():
    """Import math-verify lazily (0.7 s) and silence its "timeout is disabled" warning."""
    import math_verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return math_verify


def parse_answer(answer: str) -> list:
    """math-verify's parse of an extracted answer (sympy objects and strings); [] if it fails.

    Runs without math-verify's signal-based timeout: bound the time from outside.
    """
    mv = _math_verify()
    try:
        return mv.parse("\\boxed{" + answer + "}", parsing_timeout=None)
    except (MemoryError, RecursionError):
        raise  # a resource limit, not a parse failure: verify_math says so
    except Exception:  # math-verify raises on some malformed LaTeX despite raise_on_error=False
        return []


def _is_math(parsed: list) -> bool:
    """Did math-verify turn the answer into a math object (not just echo the string back)?"""
    return any(not isinstance(x, str) for x in parsed)


def equivalent(gold: list, pred: list) -> bool:
    """math-verify's ``verify`` with gold FIRST (it is not symmetric), no signal timeout."""
    mv = _math_verify()
    try:
        return bool(mv.verify(gold, pred, timeout_seconds=None))
    except (MemoryError, RecursionError):
        raise  # a resource limit: not evidence that the answers differ
    except Exception:
        return False


def verify_math(gold: str, completion: str, *, last_number: bool = True, whole_answer: bool = False) -> Check:
    """Judge a completion's final answer against a reference answer (or a GSM8K solution).

    ``last_number`` and ``whole_answer``: the fallbacks of :func:`extract_answer`. Verdicts:
    "correct" (reason "match"), "wrong" ("mismatch"), "unparseable" ("no answer found",
    "unclosed \\boxed{", "parse failure", "gold parse failure", "out of memory", "too deeply
    nested"; "timeout" comes from the pool).
    """
    try:
        return _verify_math(gold, completion, last_number, whole_answer)
    except MemoryError:
        return Check("unparseable", OUT_OF_MEMORY, None)
    except RecursionError:
        return Check("unparseable", TOO_DEEP, None)


def _verify_math(gold: str, completion: str, last_number: bool, whole_answer: bool) -> Check:
    gold_text = gold_answer(gold)
    if gold_text is None:
        return Check("unparseable", GOLD_PARSE_FAILURE, None)
    found = extract_answer(completion, last_number=last_number, whole_answer=whole_answer)
    if found is None:
        return Check("unparseable", UNCLOSED_BOXED if final_box_is_unclosed(completion) else NO_ANSWER, None)
    gold_parsed = parse_answer(gold_text)
    if not gold_parsed:
        return Check("unparseable", GOLD_PARSE_FAILURE, found.text)
    pred_parsed = parse_answer(found.text)
    if not pred_parsed or (_is_math(gold_parsed) and not _is_math(pred_parsed)):
        # nothing, or only the raw string back while the reference is a math object
        return Check("unparseable", PARSE_FAILURE, found.text)
    if equivalent(gold_parsed, pred_parsed):
        return Check("correct", MATCH, found.text)
    return Check("wrong", MISMATCH, found.text)


def check_item(item: tuple[str, str] | tuple[str, str, bool] | tuple[str, str, bool, bool]) -> Check:
    """Pool entry point: ``(gold, completion[, last_number[, whole_answer]])`` -> Check."""
    gold, completion, *rest = item
    return verify_math(gold, completion, last_number=rest[0] if rest else True,
                       whole_answer=rest[1] if len(rest) > 1 else False)


def warm_up() -> None:
    """Pool initializer: import math-verify and pay its slow first call before the clock starts."""
    verify_math("1", "1")
