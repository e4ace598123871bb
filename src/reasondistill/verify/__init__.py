"""Verifiers: decide whether a completion's answer is right, and say why when it is not.

Why: curation keeps only verified traces and evaluation reports verified accuracy; both need the
same, explainable judgement. Every verifier returns a :class:`~reasondistill.tasks.base.Check`
(``verdict`` "correct" | "wrong" | "unparseable", a short fixed ``reason``, the ``predicted``
answer); "cannot verify" (no answer, parse failure, timeout) is "unparseable", never "wrong".

    from reasondistill.verify import verify_math, verify_choice, verify_code, CodeProblem
    verify_math("#### 72", "... \\boxed{72}")            # math / GSM8K, via math-verify
    verify_choice("B", "The answer is (B)")              # multiple choice
    verify_code(CodeProblem(tests="assert f() == 1", entry_point="f"),
                "```python\\ndef f():\\n    return 1\\n```")  # sandboxed execution

How the pipeline's stages check answers, with a time and memory limit where a check can hang:
:func:`reasondistill.verify.checker.check_answers` (one worker pool per stage). Many items at
once, with per-item timeouts that do not depend on signals:
:func:`reasondistill.verify.checker.verify_math_many` or :func:`reasondistill.verify.pool.run_pool`.
Scoring a file from the command line: ``python -m reasondistill.verify.score --help``.
"""

from reasondistill.verify.choice import extract_choice, verify_choice
from reasondistill.verify.code import CodeProblem, extract_code, verify_code
from reasondistill.verify.checker import verify_math_many
from reasondistill.verify.math import extract_answer, verify_math
from reasondistill.verify.pool import ItemFailure, run_pool
from reasondistill.verify.sandbox import Limits, RunResult, run_sandboxed, sandbox_mode

__all__ = [
    "CodeProblem", "ItemFailure", "Limits", "RunResult", "extract_answer", "extract_choice", "extract_code",
    "run_pool", "run_sandboxed", "sandbox_mode", "verify_choice", "verify_code", "verify_math",
    "verify_math_many",
]
