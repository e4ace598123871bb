"""Does a curriculum help on the built-in task? build.order shuffle vs curriculum (by the teacher's
pass rate, by trace length), three student seeds each, on the same teacher traces.

    python bench/curriculum.py                 # the figures in the README (JSON on stdout)
    python bench/curriculum.py --n-train 800 --seeds 0 --out runs/bench_curriculum_small   # a quick look

The teacher (bundled:tiny-arith-teacher) samples ``--samples`` traces per training problem at
``--temperature`` (1.0, so that pass rates vary between 0 and 1; curate keeps one correct trace
per problem). Arms: ``shuffle`` (seeded shuffle each epoch, the default), ``curriculum_pass_rate``
(easy = high teacher pass rate first), ``curriculum_length`` (easy = fewer target tokens first).
Each trains a fresh 4-layer student for ``--epochs`` epochs (a curriculum is taken easy to hard
in every epoch) per seed and evaluates it greedily on the same held-out problems. Statistics: bench/arms.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arms import study  # noqa: E402

ARMS = {"shuffle": {"build": {"order": "shuffle"}},
        "curriculum_pass_rate": {"build": {"order": "curriculum", "curriculum_by": "pass_rate"}},
        "curriculum_length": {"build": {"order": "curriculum", "curriculum_by": "length"}}}


def main(argv: list[str] | None = None) -> dict:
    return study("curriculum", __doc__, ARMS, argv, epochs_help="student epochs (a curriculum repeats easy to hard each)")


if __name__ == "__main__":
    main()
