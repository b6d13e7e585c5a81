"""How the settings layers combine (defaults < TOML < SBD_* environment < flags), apart from the models.

Pure dict logic, so that ``config.py`` keeps to the models and their checks. Two rules a key-by-key merge
got wrong:

* the detector's dose is one setting in two units (``dose_e_per_A2`` or ``counts_per_px``): a layer that
  gives either replaces both below it. Merged key by key, the shipped TOML's ``dose_e_per_A2`` and a
  ``--counts-per-px`` flag were both kept and refused as "not both";
* an ``SBD_`` variable that looks like a setting but names none (``SBD_RECORDS__DIRECTORY``: no such
  section; ``SBD_LANES_LIVE``: one underscore, not nested) is refused. pydantic-settings reads only the
  names that match a field, so such a typo was silently not applied. So is a top-level name one edit
  or so from a field (``SBD_STOP_TIMEOUT`` for ``SBD_STOP_TIMEOUT_S``); other ``SBD_`` names
  (``SBD_ENGINE_DIR``, a user's own) are left alone.

And what every layer's values must not be, whichever layer gave them: ``true`` / ``false`` for a number
(``no_bool``), an empty recording folder (``not_blank``).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any, get_args

from pydantic import BaseModel

DOSE_KEYS = ("dose_e_per_A2", "counts_per_px")


def no_bool(cls: type[BaseModel], data: Any) -> Any:
    """Numbers refuse true / false as in the environment (``SBD_STOP_TIMEOUT_S=true``: not a number): TOML's
    ``stop_timeout_s = true`` read as 1.0. (A model validator: ``dialect`` is a discriminator.)"""
    for k, v in data.items() if isinstance(data, dict) else ():
        a = cls.model_fields[k].annotation if k in cls.model_fields else bool
        kinds = {x for t in (a, *get_args(a)) for x in (t, *get_args(t))}  # Optional[Annotated[int, ...]]
        if isinstance(v, bool) and bool not in kinds and {int, float} & {*kinds, *map(type, kinds)}:
            data = {**data, k: str(v).lower()}  # the text then fails as the environment's does
    return data


def not_blank(why: str) -> Any:
    """A field validator refusing an empty or blank text with ``why``: ``record.directory = ""``, or an
    unset shell variable in ``SBD_RECORD__DIRECTORY=$DIR``, recorded into the working folder (``Path("")``
    is ``.``) without a word (audit h30)."""

    def check(v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            raise ValueError(why)
        return v

    return check


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def merge_layer(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, the dose's two forms replaced together (module docstring)."""
    det = over.get("detector")
    if isinstance(det, dict) and any(det.get(k) is not None for k in DOSE_KEYS):
        lower = base.get("detector")
        if isinstance(lower, dict):
            base = {**base, "detector": {k: v for k, v in lower.items() if k not in DOSE_KEYS}}
    return deep_merge(base, over)


def check_env_names(environ: Mapping[str, str], sections: Collection[str], fields: Collection[str]) -> None:
    """``ValueError`` (one line) for an ``SBD_`` variable that names no setting but looks like one.

    ``sections``: the settings tables (``record``, ``lanes``, ...); ``fields``: every top-level name.
    Other ``SBD_`` variables (``SBD_ENGINE_DIR``, ``SBD_CACHE_DIR``, ...) start with no section name.

    Names are compared in any case, as pydantic-settings applies them: before (audit h33) a lowercase
    ``sbd_record__directory`` was applied while a lowercase typo (``sbd_lanes_live``) was ignored, and
    ``sbd_record__directory`` beside ``SBD_RECORD__DIRECTORY`` won or lost by the environment's order.
    """
    seen: dict[str, str] = {}
    for key in sorted(environ):
        if not key.upper().startswith("SBD_"):  # pydantic-settings reads ``sbd_...`` too (any case)
            continue
        name = key[4:].lower()
        head = name.split("__", 1)[0]
        if head in fields and name in seen:  # which one pydantic-settings keeps depends on the order
            raise ValueError(f"{seen[name]} and {key}: one setting given twice; keep SBD_{name.upper()}")
        seen[name] = key
        if "__" in name and head not in fields:
            raise ValueError(f"{key}: no settings section {head!r} (sections: {', '.join(sorted(sections))})")
        for sec in sections:
            if "__" not in name and name.startswith(f"{sec}_"):
                rest = key[4 + len(sec) + 1 :].upper()
                raise ValueError(f"{key}: nested settings need two underscores: SBD_{sec.upper()}__{rest}")
        if "__" not in name and name not in fields:
            near = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.8)
            if near:
                raise ValueError(f"{key}: no such setting; did you mean SBD_{near[0].upper()}?")


def check_file_names(data: Mapping[str, Any], fields: Collection[str], where: str) -> None:
    """``ValueError`` (one line) for a TOML table or top-level key named as a setting in another case.

    Why: TOML names are case-sensitive, and every other name in the file is taken as written
    (``[denoise] BATCH_FRAMES`` is refused as unknown), but the top level went through pydantic-settings'
    case-blind matching: ``[DENOISE]`` or ``STOP_TIMEOUT_S`` was applied, and beside ``[denoise]`` one
    of the two was dropped without a word, the first in the file kept (audit h33).
    """
    lower = {f.lower(): f for f in fields}
    for key in data:
        if key not in fields and key.lower() in lower:
            raise ValueError(f"{where}: {key}: names are case-sensitive; write {lower[key.lower()]}")


_TRUE = ("1", "1.0", "t", "true", "y", "yes", "on")  # what pydantic reads as a bool (``bool_parsing``)
_FALSE = ("0", "0.0", "f", "false", "n", "no", "off")


def older_policy_in_its_layer(layer: dict[str, Any], where: str) -> dict[str, Any]:
    """``denoise.policy`` (the older name of ``lanes.live``) as ``lanes.live`` of the same layer.

    Why: applied after the layers were merged, a config file's ``policy = "lossless"`` (the shipped
    files up to 2026-12-02 carry ``policy``) silently beat ``--live`` and ``SBD_LANES__LIVE``, against
    the documented order flags > environment > file. Both names in one layer must agree.
    """
    den = layer.get("denoise")
    if not isinstance(den, dict) or den.get("policy") is None:
        return layer
    policy = str(getattr(den["policy"], "value", den["policy"])).strip().lower()
    if policy not in ("latest", "lossless"):
        return layer  # validation names the bad value
    live = policy == "latest"
    lanes = raw if isinstance(raw := layer.get("lanes"), dict) else {}
    if "live" in lanes:
        text = str(lanes["live"]).strip().lower()
        given = (
            lanes["live"]
            if isinstance(lanes["live"], bool)
            else (text in _TRUE if text in _TRUE + _FALSE else None)
        )
        if given is not None and given != live:
            raise ValueError(
                f"{where}: denoise.policy = {policy!r} and lanes.live = {given} disagree; "
                "drop denoise.policy (the older name of lanes.live)"
            )
        return layer
    return {**layer, "lanes": {**lanes, "live": live}}
