"""Pathological math answers: completions a verifier must survive (finish, within its time limit).

Why: a teacher, an ingested file or a student can write an answer that makes sympy or a regex run
for ever or eat all memory (``2^{2^{2^{30}}}``, 10k-deep nesting, a 5 MB answer, a run of ``$``).
Every stage must still finish, each such answer judged "unparseable" (``timeout`` or another
reason), never "wrong" and never a hang. One list, so that the CI tests (tests/faults/) and a
bench (bench/faults.py) measure the same thing:

    from pathological_answers import ANSWERS, CI_SUBSET   # tests/faults on sys.path
    for name, completion in ANSWERS: ...

Each entry is ``(name, completion)``; the reference answer they are checked against is ``GOLD``.
``CI_SUBSET`` names one of each kind, for a fast test.
"""

from __future__ import annotations

GOLD = "5"

DEEP = 10_000
BIG = 5_000_000

ANSWERS: list[tuple[str, str]] = [
    # huge powers: sympy tries to evaluate them
    ("tower 2^2^2^30", "\\boxed{2^{2^{2^{30}}}}"),
    ("tower 10^10^10^10", "\\boxed{10^{10^{10^{10}}}}"),
    ("power 9^9^9", "\\boxed{9^{9^{9}}}"),
    ("factorial of a power", "\\boxed{(10^{10})!}"),
    ("power in a fraction", "\\boxed{\\frac{2^{2^{40}}}{3^{3^{40}}}}"),
    ("power under a root", "\\boxed{\\sqrt{2^{2^{2^{20}}}}}"),
    ("tower as text", "The answer is 2**2**2**2**2**2."),
    # deep nesting: recursion in the parsers
    ("10k nested braces", "\\boxed{" + "{" * DEEP + "1" + "}" * DEEP + "}"),
    ("10k nested parentheses", "\\boxed{" + "(" * DEEP + "1" + ")" * DEEP + "}"),
    ("10k nested fractions", "\\boxed{" + "\\frac{1}{" * DEEP + "2" + "}" * DEEP + "}"),
    ("10k nested roots", "\\boxed{" + "\\sqrt{" * DEEP + "2" + "}" * DEEP + "}"),
    ("10k unclosed boxes", "\\boxed{" * DEEP),
    # size: every step must be linear in the length
    ("5 MB sum", "\\boxed{" + "1+" * (BIG // 2) + "1}"),
    ("5 MB digits", "\\boxed{" + "7" * BIG + "}"),
    ("5 MB of text, no answer", "x " * (BIG // 2)),
    ("200k boxes", "\\boxed{1} " * 200_000),
    # runs of $ (clean_answer's old regex backtracked cubically: 4,000 took 58 s)
    ("4,000 $", "$" * 4_000),
    ("1M $ boxed", "\\boxed{" + "$" * 1_000_000 + "}"),
    ("$ run around a number", "The answer is " + "$" * 100_000 + "5" + "$" * 100_000 + "x"),
    # LaTeX that makes sympy slow
    ("big polynomial power", "\\boxed{(x+y+z+1)^{400}}"),
    ("huge binomial", "\\boxed{\\binom{10^{12}}{10^{6}}}"),
    ("long product", "\\boxed{" + "\\cdot".join(f"(x+{i})" for i in range(3000)) + "}"),
    ("matrix of powers", "\\boxed{\\begin{pmatrix}" + "\\\\".join("&".join(f"{i}^{{{j}^{{{j}}}}}" for j in range(30))
                                                                   for i in range(30)) + "\\end{pmatrix}}"),
    ("many-term set", "\\boxed{\\{" + ",".join(str(i) for i in range(50_000)) + "\\}}"),
    ("integral", "\\boxed{\\int_0^{10^{100}} e^{-x^{x^{x}}}\\,dx}"),
]

CI_SUBSET = ("tower 2^2^2^30", "10k nested braces", "5 MB sum", "4,000 $", "10k unclosed boxes")


def by_name(names: tuple[str, ...] = CI_SUBSET) -> list[tuple[str, str]]:
    """The entries with these names, in this order."""
    table = dict(ANSWERS)
    return [(n, table[n]) for n in names]
