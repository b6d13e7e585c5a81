"""Train / validation / test splits by structure.

Images of one atomic structure differ only in thickness, tilt and defocus, so splitting by image would let
the test set share structures with training and flatter every learned method. Splitting by structure id
keeps each structure in exactly one split, which is what "held-out" has to mean here.
"""

from __future__ import annotations

import hashlib

import numpy as np
from pydantic import BaseModel, Field


class SplitSpec(BaseModel):
    """Fractions of *structures* per split; at least one structure lands in val and test."""

    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    seed: int = 0


def _order(ids: list[str], seed: int) -> list[str]:
    """Seeded, platform-independent order of structure ids (hash-sorted, not RNG-shuffled)."""
    return sorted(ids, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())


def split_structures(structure_ids: np.ndarray, spec: SplitSpec = SplitSpec()) -> dict[str, list[str]]:
    """Structure ids of each split: a seeded hash order, the first ones to test, the next to val."""
    unique = sorted({str(s) for s in structure_ids})
    n = len(unique)
    if n < 3:
        raise ValueError(f"need at least 3 structures to split by structure, got {n}")
    n_val = max(1, round(spec.val_fraction * n)) if spec.val_fraction > 0 else 0
    n_test = max(1, round(spec.test_fraction * n)) if spec.test_fraction > 0 else 0
    if n_val + n_test >= n:
        raise ValueError(f"{n} structures leave none for training with these fractions")
    ordered = _order(unique, spec.seed)
    test = sorted(ordered[:n_test])
    val = sorted(ordered[n_test : n_test + n_val])
    train = sorted(s for s in unique if s not in set(test) | set(val))
    return {"train": train, "val": val, "test": test}


def split_indices(
    structure_ids: np.ndarray, spec: SplitSpec = SplitSpec(), universe: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Image indices of each split (sorted), derived from :func:`split_structures`.

    ``universe``: every structure the data set will hold (its simulation plan). A file still being
    simulated holds only some of them; splitting those alone would put a structure in training now and
    in the test split once the file is complete, so the split is drawn over the plan when it is known."""
    ids = np.asarray([str(s) for s in structure_ids])
    groups = split_structures(np.asarray(universe) if universe is not None else ids, spec)
    return {name: np.flatnonzero(np.isin(ids, members)) for name, members in groups.items()}
