"""bench_training parses its arguments: --help or a typo must not run a minute of measuring and
overwrite the committed results."""

from __future__ import annotations

import pytest

from benchmarks import bench_training


@pytest.mark.parametrize(("argv", "code"), [(["--help"], 0), (["--typo"], 2)])
def test_help_and_typos_stop_before_measuring(
    argv: list[str], code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_run(*_a: object, **_k: object) -> None:
        raise AssertionError("measured although the arguments said not to")

    for name in ("train_step_rate", "frame_latency", "onnx_channel_sweep", "_write"):
        monkeypatch.setattr(bench_training, name, no_run)
    with pytest.raises(SystemExit) as e:
        bench_training.main(argv)
    assert e.value.code == code
