"""An engine card's dose has to agree with itself, and every file a backend loads needs its checksum.

``engines/card.py`` ``EngineCard._dose_consistent``: "Counts per working pixel in vacuum follow from
dose per area and pixel size; they must agree", and ``dose_range`` "must bracket 1 (factors of the
nominal dose)"; docs/design.md: "a validator keeps them consistent with the normalisation's counts per
pixel". ``file_problem``: "Why ``filename`` cannot be loaded (absent, unlisted, ...)", and
``available_kinds``: "With ``card``, each backend's file must also be listed by it". Mutation audit
(round 2): a 10x looser dose tolerance (EN5), a range not bracketing 1 (EN6) and a file the card has
no checksum for reported usable (EN4) all survived the engine tests. The shipped card and a real tiny
engine (``tests/conftest.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from tampering import clone

from sbd_stream.engines import available_kinds, load_engine
from sbd_stream.engines.card import ArtefactError, EngineCard, file_problem, load_card

SHIPPED = Path(__file__).resolve().parents[2] / "engines" / "sbd-unet4-paper-twins" / "card.json"


def _shipped() -> dict[str, Any]:
    """The shipped engine's card: 0.24 A, 125 e/A^2, normalised by 7.2 counts/px, range 0.5-2x."""
    card = json.loads(SHIPPED.read_text())
    assert (card["pixel_size_A"], card["dose_e_per_A2"], card["normalisation"]["dose"]) == (0.24, 125.0, 7.2)
    return card


def test_the_shipped_card_is_valid_as_it_is() -> None:
    EngineCard.model_validate(_shipped())


@pytest.mark.parametrize("factor", [0.9, 1.1, 0.97, 1.03])
def test_a_normalisation_dose_off_the_dose_per_area_is_refused(factor: float) -> None:
    card = _shipped()
    card["normalisation"]["dose"] *= factor  # 7.2 counts/px no longer 125 e/A^2 x 0.24^2 A^2
    with pytest.raises(ValidationError, match="normalises by"):
        EngineCard.model_validate(card)


def test_a_normalisation_dose_within_rounding_is_accepted() -> None:
    card = _shipped()
    card["normalisation"]["dose"] = 7.25  # 0.7 %: a dose rounded when the card was written
    assert EngineCard.model_validate(card).working_dose_counts == 7.25


@pytest.mark.parametrize("dose_range", [(0.5, 0.8), (1.2, 2.0), (0.0, 2.0), (2.0, 0.5)])
def test_a_dose_range_that_does_not_bracket_the_nominal_dose_is_refused(
    dose_range: tuple[float, float],
) -> None:
    card = _shipped()
    card["dose_range"] = list(dose_range)
    with pytest.raises(ValidationError, match="must bracket 1"):
        EngineCard.model_validate(card)


@pytest.mark.parametrize("dose_range", [(1.0, 1.0), (0.5, 1.0), (1.0, 3.0)])
def test_a_dose_range_bracketing_1_is_accepted(dose_range: tuple[float, float]) -> None:
    card = _shipped()
    card["dose_range"] = list(dose_range)
    assert EngineCard.model_validate(card).dose_range == dose_range


def test_a_file_the_card_lists_no_checksum_for_is_not_usable(tiny_engine_dir: Path, tmp_path: Path) -> None:
    engine = clone(tiny_engine_dir, tmp_path, "unlisted")
    card = json.loads((engine / "card.json").read_text())
    assert "model.onnx" in card["checksums"] and (engine / "model.onnx").is_file()
    del card["checksums"]["model.onnx"]  # the file is there, the card does not vouch for it
    (engine / "card.json").write_text(json.dumps(card))
    loaded = load_card(engine)
    said = "the card has no checksum for model.onnx"
    assert file_problem(engine, loaded, "model.onnx", verify=False) == said  # `auto`: only looks
    assert file_problem(engine, loaded, "model.onnx", verify=True) == said  # `info`: hashes
    assert file_problem(engine, loaded, "model.pt", verify=True) is None
    kinds = available_kinds(engine, loaded)
    assert kinds["torch"] is None
    if kinds["onnxruntime"] != "onnxruntime is not installed":
        assert kinds["onnxruntime"] == said
    with pytest.raises(ArtefactError, match=r"no checksum for model\.onnx"):
        load_engine("onnxruntime", engine)  # the verified load refuses it too
