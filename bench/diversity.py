"""Which K traces per problem should a student see? curate.select first vs diverse vs shortest
(K = 2 of the teacher's samples), three student seeds each, on the same teacher traces.

    python bench/diversity.py                  # the figures in the README (JSON on stdout)
    python bench/diversity.py --n-train 800 --seeds 0 --out runs/bench_curation_small

Shares its teacher traces with bench/curriculum.py when given the same ``--out`` and generation
settings. Arms: ``first`` (the first two distinct correct traces in sample order), ``diverse``
(greedy max-min Jaccard distance of thinking shingles, curate/select.py), ``shortest`` (the two
with fewest tokens). Besides accuracy, each arm reports curate's mean pairwise distance of the kept
traces against all candidates and mean tokens kept. Statistics: bench/arms.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arms import study  # noqa: E402

ARMS = {mode: {"curate": {"max_per_problem": 2, "select": mode}} for mode in ("first", "diverse", "shortest")}


def main(argv: list[str] | None = None) -> dict:
    return study("diversity", __doc__, ARMS, argv, prefix="select_", epochs_help="student epochs")


if __name__ == "__main__":
    main()
