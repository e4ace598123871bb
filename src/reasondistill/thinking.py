"""How reasoning and answer share one completion: ``<think>…</think>`` then the final answer.

Why: the teacher writes, the curator checks, the builder formats and the evaluator parses the
same layout; keeping it in one module keeps the four in agreement.

    >>> split_thinking("<think>47+5=52</think>\\n\\n52")
    ('47+5=52', '52', True)
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def format_target(thinking: str, answer: str, think_tags: bool = True) -> str:
    """The assistant text a student is trained to write (EOS is added by the tokenizer step)."""
    if not thinking:
        return answer
    if think_tags:
        return f"{OPEN}{thinking}{CLOSE}\n\n{answer}"
    return f"{thinking}\n\n{answer}"


def split_thinking(text: str) -> tuple[str, str, bool]:
    """Split a completion into (thinking, answer, well_formed).

    well_formed is False when a ``<think>`` is opened and never closed, or tags are repeated;
    then the whole text is returned as thinking and the answer is empty. A completion with no
    tags at all is all answer (a model that does not think aloud).
    """
    stripped = text.lstrip()
    if CLOSE in stripped:
        head, _, tail = stripped.partition(CLOSE)
        if head.startswith(OPEN):
            head = head[len(OPEN):]
        ok = OPEN not in head and CLOSE not in tail and OPEN not in tail
        return head.strip(), tail.strip(), ok
    if stripped.startswith(OPEN) or OPEN in stripped:
        return stripped.replace(OPEN, "", 1).strip(), "", False
    return "", stripped.strip(), True
