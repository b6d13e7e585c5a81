"""An engine card's numbers refuse true / false: ``"pixel_size_A": true`` was a 1 A engine (``float(True)``),
``"dose": true`` a dose of one count, ``"tile": true`` one-pixel tiles (session 35)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sbd_stream.engines.card import ArtefactError, load_card

SHIPPED = Path(__file__).resolve().parents[2] / "engines" / "sbd-unet4-paper-twins"


def _card_with(tmp_path: Path, edit: dict[str, object], section: str | None = None) -> Path:
    folder = tmp_path / SHIPPED.name
    shutil.copytree(SHIPPED, folder)
    card = json.loads((folder / "card.json").read_text())
    (card[section] if section else card).update(edit)
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def test_the_shipped_card_loads_as_it_is(tmp_path: Path) -> None:
    assert load_card(_card_with(tmp_path, {})).pixel_size_A == pytest.approx(0.24)


@pytest.mark.parametrize(
    ("section", "field"),
    [(None, "pixel_size_A"), (None, "dose_e_per_A2"), ("normalisation", "dose"), ("tiling", "tile"),
     ("tiling", "margin")],
)  # fmt: skip
def test_a_boolean_for_a_number_is_refused_naming_the_field(
    tmp_path: Path, section: str | None, field: str
) -> None:
    folder = _card_with(tmp_path, {field: True}, section)
    with pytest.raises(ArtefactError) as info:
        load_card(folder)
    assert field in str(info.value)


def test_an_int_is_still_a_number(tmp_path: Path) -> None:
    card = load_card(_card_with(tmp_path, {"dose_e_per_A2": 125}))
    assert card.dose_e_per_A2 == 125.0
