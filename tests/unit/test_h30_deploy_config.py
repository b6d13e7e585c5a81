"""Settings a facility engineer gets wrong while deploying, refused by name before anything loads (audit h30).

Why: ``[denoise] device = "gpu"`` and ``engine = "tensorrrt"`` passed the settings, then every backend was
tried and the one ``error:`` line was three torch / ONNX Runtime messages under ``engine:``, naming no
setting. ``record.directory = ""`` (as an unset ``SBD_RECORD__DIRECTORY=$DIR`` gives) recorded into the
working folder without a word.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from sbd_stream.config import load_settings


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "service.toml"
    path.write_text(text)
    return path


def _refused_keys(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ValidationError) as e:
        load_settings(_file(tmp_path, text))
    return [".".join(str(x) for x in err["loc"]) for err in e.value.errors()]


@pytest.mark.parametrize(
    "text, key",
    [
        ('[denoise]\nengine = "tensorrrt"\n', "denoise.engine"),
        ('[denoise]\ndevice = "gpu"\n', "denoise.device"),
        ('[denoise]\ndevices = ["cuda:0", "gpu1"]\n', "denoise.devices.1"),
        ('[record]\ndirectory = ""\n', "record.directory"),
        ('[record]\ndirectory = " "\n', "record.directory"),
    ],
)
def test_a_typo_or_an_empty_value_is_refused_naming_its_setting(tmp_path: Path, text: str, key: str) -> None:
    assert _refused_keys(tmp_path, text) == [key]


def test_what_the_docs_name_passes_and_a_near_miss_does_not(tmp_path: Path) -> None:
    for engine in ("auto", "tensorrt", "onnxruntime", "torch"):
        assert load_settings(_file(tmp_path, f'[denoise]\nengine = "{engine}"\n')).denoise.engine == engine
    text = '[denoise]\ndevice = "cuda:1"\ndevices = ["cpu", "cuda", "cuda:0"]\n[metrics]\nhost = "0.0.0.0"\n'
    s = load_settings(_file(tmp_path, text))
    assert (s.denoise.device, s.denoise.devices) == ("cuda:1", ["cpu", "cuda", "cuda:0"])
    assert s.metrics.host == "0.0.0.0"  # every interface, written on purpose
    for near in ('device = "cuda0"', 'device = "CUDA"', 'engine = "TensorRT"', 'devices = ["cuda:1 "]'):
        assert _refused_keys(tmp_path, f"[denoise]\n{near}\n")[0].startswith("denoise.")


def test_an_unset_variable_does_not_record_into_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SBD_RECORD__DIRECTORY", "")  # SBD_RECORD__DIRECTORY=$DIR with DIR unset
    with pytest.raises(ValidationError) as e:
        load_settings(None)
    assert [err["loc"] for err in e.value.errors()] == [("record", "directory")]


def test_serve_refuses_a_bad_device_in_one_line_before_the_engine_loads(tmp_path: Path) -> None:
    """The whole command: exit 2, one ``error:`` line naming the setting, and no backend was tried."""
    path = _file(
        tmp_path,
        '[ingest]\nendpoint = "tcp://127.0.0.1:29997"\n[publish]\nendpoint = "tcp://127.0.0.1:29998"\n'
        f'[metrics]\nport = 0\n[record]\ndirectory = "{tmp_path / "rec"}"\n[denoise]\ndevice = "gpu"\n',
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBD_") or k == "SBD_ENGINE_DIR"}
    r = subprocess.run(
        [sys.executable, "-m", "sbd_stream", "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "sbd_stream.engines" not in r.stderr  # no backend was tried
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and " INFO " not in ln]  # the ulimit line
    assert len(lines) == 1 and lines[0].startswith("error: denoise.device: "), r.stderr
    assert "'gpu'" in lines[0] and "Traceback" not in r.stderr
