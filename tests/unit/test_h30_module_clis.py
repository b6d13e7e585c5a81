"""The data tools run as modules (`python -m training.samples`, `python -m training.sim.contrast_report`)
answer --help, a missing argument and a missing file as command lines do: --help was read as the data
file and no argument was an IndexError traceback (CLI audit h30)."""

from __future__ import annotations

import pytest

from training.sim import contrast_report, samples


@pytest.mark.parametrize("main", [samples.main, contrast_report.main], ids=["samples", "contrast_report"])
def test_help_missing_argument_and_missing_file(main, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "usage: python -m training." in capsys.readouterr().out
    for argv in ([], ["/no/such/world.h5"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert "no such file" in capsys.readouterr().err
