"""Resuming a run from its ``last.pt``: which options may change between the segments of one run.

A run directory holds one training run: its checkpoints, log and ``config.json``, which the export puts
into the engine card. Resumed with other data, another network or another recipe, the weights would go on
learning something else while the card still described one run ("trained on 0.155 A" of a network that
spent its last steps on 0.24 A frames), and the batches would no longer be the ones the uninterrupted run
draws. So a resumed run must be the same run: only budgets and purely operational fields may differ.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from training.train.config import TrainConfig

MAY_DIFFER: frozenset[str] = frozenset(
    {
        # budgets: how long the run goes on (with the cosine schedule the rate decays from its current
        # value to min_lr at the new budget's end: loop.retime_anchor; a stop rule decides when, not
        # what, the network learns)
        "max_steps",
        "max_minutes",
        "early_stop_patience",
        # operational: where and how fast it runs, how often it reports; none changes a draw or a weight
        "device",
        "threads",
        "log_every",
        "preload_max_gb",  # a test checks streaming from the file trains exactly like preloading
        "notes",
        # the run directory itself: the same runs/<name> by construction
        "name",
        "out_dir",
    }
)
"""``TrainConfig`` fields (top level) a resumed run may change; every other field must stay as it was."""

PATH_FIELDS = ("data", "extra_data", "init_from")
"""Fields compared as paths: ``data/mini.h5`` and ``./data/mini.h5`` name one file."""


class ResumeMismatch(ValueError):
    """A run directory resumed with options that would make it another run."""


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _comparable(key: str, value: Any) -> Any:
    if key not in PATH_FIELDS or value is None:
        return value
    if isinstance(value, list):
        return [os.path.abspath(v) for v in value]
    return os.path.abspath(value)


def differences(stored: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (the run's value, the new value)}`` of every field that may not change on resume
    (nested fields dotted: ``augment.patch``)."""
    a = _flatten(stored.model_dump(mode="json"))
    b = _flatten(new.model_dump(mode="json"))
    out = {}
    for key in sorted(a.keys() | b.keys()):
        if key.split(".")[0] in MAY_DIFFER:
            continue
        if _comparable(key, a.get(key)) != _comparable(key, b.get(key)):
            out[key] = (a.get(key), b.get(key))
    return out


def stored_config(run_dir: Path) -> TrainConfig | None:
    """The options the run in ``run_dir`` was last started with (its ``config.json``; None: none)."""
    path = run_dir / "config.json"
    return TrainConfig.model_validate_json(path.read_text()) if path.is_file() else None


def resumed_config(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """The config a resumed run goes on with: ``cfg``, checked against the run's ``config.json``.

    An ``init_from`` left out means "as the run was started": the run's own is kept, so the batch-norm
    freeze of a run started from an engine survives a resume that does not repeat ``--init-from``.
    Raises ResumeMismatch (one line: each differing field with both values, and how to go on)."""
    path = run_dir / "config.json"
    stored = stored_config(run_dir)
    if stored is None:
        return cfg  # a last.pt without its config (an old run): nothing to compare with
    if cfg.init_from is None and stored.init_from is not None:
        cfg = cfg.model_copy(update={"init_from": stored.init_from})
    diff = differences(stored, cfg)
    if diff:
        listed = "; ".join(f"{k}: {old!r} (run) vs {new!r} (now)" for k, (old, new) in diff.items())
        raise ResumeMismatch(
            f"{run_dir} was started with other options ({listed}): resume it with the run's options "
            f"(see {path}), train under a new --name, or delete {run_dir} to start over"
        )
    return cfg


def effective_freeze(cfg: TrainConfig, init_info: dict[str, Any] | None) -> int | None:
    """The step from which batch norm runs frozen: 0 in a run started from an engine's weights.

    Why: such a run has its running statistics already; unfrozen, a CPU batch of 2 frames at mixed doses
    drags them away (the wide GPU trial so lost 30 dB in eval mode in 400 steps, session 16). Not when
    some layers start fresh (a transplant into a block UNet learns theirs first). ``init_info`` is the
    run's own record (its ``last.pt`` state), so a resumed run freezes as it started."""
    transplanted = bool((init_info or {}).get("transplanted"))
    if (cfg.init_from is not None or init_info) and not transplanted:
        return 0
    return cfg.freeze_norm_after
