"""The defaults docs/service.md states are the defaults ``ServiceSettings`` has; ``idle_close_s`` > 0.

docs/service.md, "Settings": the ``service.toml`` example (its values are the defaults, except where
its comment names another default) and "Settings the example leaves out, with their defaults"
(``record.record_llr`` (true), ...). The existing docs checks look only at names (presence), so a
default changed in ``config.py`` left the documented one wrong. Mutation audit (round 2): the default
``record.denoised_dtype`` "float16" -> "float32" (CF1, recordings twice as large as documented) and
``idle_close_s`` accepting 0 (CF2; files closed on every idle check) survived every config test.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from sbd_stream.config import RecordSettings, ServiceSettings, load_settings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "service.md").read_text()

# keys of the example whose value is not the default; the example's own comment says what is
EXAMPLE_VALUES = {
    "detector.dose_e_per_A2",  # "or counts_per_px = 0.45": no dose unless one is set, the engine's is used
    "record.compress_threads",  # "default min(4, cores)": depends on the machine
    "denoise.model",  # "default: the live engine where the worker runs"
    "denoise.workers",  # "default: one per device / visible GPU, else 1"
    "denoise.devices",  # "default: every visible GPU, else cpu"
    "denoise.threads_per_worker",  # "default: cores / workers"
}


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for name in [n for n in os.environ if n.startswith("SBD_")]:
        monkeypatch.delenv(name)
    return ServiceSettings().model_dump(mode="json")


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def _example() -> dict[str, Any]:
    (block,) = re.findall(r"```toml\n(# service\.toml\n.*?)```", DOC, re.S)
    out: dict[str, Any] = {}

    def flat(d: dict[str, Any], at: str = "") -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                flat(v, f"{at}{k}.")
            else:
                out[f"{at}{k}"] = v

    flat(tomllib.loads(block))
    return out


def _left_out() -> dict[str, Any]:
    """``key`` (value) pairs of the list after the example, where the value is a TOML literal or a word."""
    section = DOC.split("Settings the example leaves out, with their defaults")[1].split("\n## ")[0]
    out: dict[str, Any] = {}
    for m in re.finditer(r"`([a-z_]+\.[a-z_.]+)` \(`?([^)`]+)`?\)", section):
        value = m.group(2).split(",")[0].strip()
        try:
            out.setdefault(m.group(1), tomllib.loads(f"v = {value}")["v"])
        except tomllib.TOMLDecodeError:
            if re.fullmatch(r"[a-z0-9_]+", value):
                out.setdefault(m.group(1), value)
    return out


def test_the_example_settings_file_shows_the_defaults(defaults: dict[str, Any]) -> None:
    example = _example()
    assert example["record.denoised_dtype"] == "float16" and len(example) > 40  # the block was found
    assert set(example) >= EXAMPLE_VALUES  # the exceptions are still in the example
    wrong = {
        k: (v, _get(defaults, k))
        for k, v in example.items()
        if k not in EXAMPLE_VALUES and v != _get(defaults, k)
    }
    assert not wrong, f"docs/service.md's service.toml (documented, default): {wrong}"


def test_the_settings_left_out_of_the_example_have_their_documented_defaults(
    defaults: dict[str, Any],
) -> None:
    listed = _left_out()
    assert {"record.record_llr", "publish.queue_frames", "denoise.orientations"} <= set(listed)
    wrong = {k: (v, _get(defaults, k)) for k, v in listed.items() if v != _get(defaults, k)}
    assert not wrong, f"docs/service.md (documented, default): {wrong}"


def test_denoised_frames_are_recorded_as_float16_by_default(defaults: dict[str, Any]) -> None:
    """docs/service.md: "**Denoised frames are stored as float16 by default** (`record.denoised_dtype`)"."""
    assert RecordSettings().denoised_dtype == "float16" == defaults["record"]["denoised_dtype"]


@pytest.mark.parametrize("value", [0, 0.0, -1.0])
def test_idle_close_s_must_be_positive(value: float) -> None:
    with pytest.raises(ValidationError, match="idle_close_s"):
        RecordSettings(idle_close_s=value)
    with pytest.raises(ValidationError, match="idle_close_s"):
        load_settings(overrides={"record": {"idle_close_s": value}})
    assert RecordSettings(idle_close_s=0.5).idle_close_s == 0.5
