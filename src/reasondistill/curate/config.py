"""Config sections of the curate stage's newer filters (pass-rate band, near-duplicate removal).

Why apart from ``config.py``: each section sits next to the code that reads it
(``curate/select.py``, ``curate/minhash.py``) and ``config.py`` refers to it with one field, so
several people can extend curation without editing the same lines. Pure pydantic: no stage code
is imported here.

    curate: {pass_rate: {min: 0.1, max: 0.9}, select: diverse, near_dedup: {threshold: 0.85}}
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PassRateBand(_Strict):
    """Keep the problems whose teacher pass rate (correct samples / samples) lies in [min, max]:
    neither trivial (above max) nor hopeless (below min), as open-r1 filters its data."""

    min: float = Field(0.0, ge=0, le=1, description="lowest teacher pass rate kept")
    max: float = Field(1.0, ge=0, le=1, description="highest teacher pass rate kept")

    @model_validator(mode="after")
    def _ordered(self) -> "PassRateBand":
        if self.min > self.max:
            raise ValueError(f"need min <= max, got min={self.min}, max={self.max}")
        return self


class NearDedupConfig(_Strict):
    """Near-duplicate training problems: a problem whose prompt's estimated Jaccard similarity (MinHash
    over character shingles, curate/minhash.py) with an earlier kept problem reaches ``threshold``
    loses its traces; the first problem (file order) is kept."""

    threshold: float = Field(0.85, gt=0, le=1, description="Jaccard similarity from which two prompts are "
                             "near-duplicates")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: a closer estimate)")
    shingle: int = Field(5, ge=1, description="characters per shingle of the normalised prompt")
