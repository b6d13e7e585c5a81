"""Atom-column detection numbers that go into Table 5.1, pinned on small asymmetric cases computed by hand.

Why: the mutation audit (audit26, defects 8 and 9) found that precision and recall could be swapped, the
border test could use the wrong axis on non-square frames, invisible columns could count as misses, a
polarity tie could go to black and ``calibrate_threshold`` could pick the worst threshold, all without a
failing test: the old cases were square and symmetric (detected == truth). The rules quoted here are the
module docstring of ``training/evaluate/metrics.py`` and docs/training.md "Metrics (Sec. 5.2, 5.3.1)".
"""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate.metrics import (
    BLACK,
    INTERMEDIATE,
    WHITE,
    Z_PT,
    Counts,
    DetectionSpec,
    calibrate_threshold,
    detection_scores,
    image_polarity,
    match_detections,
)
from training.sim.structures import Z_CE

SPEC = DetectionSpec(pixel_size_A=0.155, border_px=6)


def _columns(xy: list[tuple[float, float]], surface: list[bool], contrast: list[int], species=None) -> dict:
    n = len(xy)
    return {
        "xy": np.array(xy, np.float64).reshape(-1, 2),
        "species": np.array(species if species is not None else [Z_PT] * n),
        "is_surface": np.array(surface, bool),
        "contrast": np.array(contrast),
    }


def _triple(c: Counts) -> tuple[int, int, int]:
    return c.tp, c.detected, c.truth


def test_precision_divides_by_detections_and_recall_by_ground_truth() -> None:
    """'precision = |A∩B| / |detections| and recall = |A∩B| / |ground truth|' (the prose, not the
    paper's swapped equations). 8 matched of 10 detections and 16 true columns: P = 0.8, R = 0.5."""
    s = Counts(tp=8, detected=10, truth=16).scores()
    assert s["precision"] == pytest.approx(0.8)
    assert s["recall"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(2 * 0.8 * 0.5 / 1.3)  # 0.6154
    assert s["jaccard"] == pytest.approx(8 / (10 + 16 - 8))
    # the other way round: more detections than columns lowers precision, not recall
    s = Counts(tp=3, detected=12, truth=4).scores()
    assert (s["precision"], s["recall"]) == pytest.approx((0.25, 0.75))


def test_precision_and_recall_of_empty_classes() -> None:
    """No detections and no columns is perfect; no detections of existing columns is 0 precision."""
    assert Counts(0, 0, 0).scores() == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "jaccard": 1.0}
    s = Counts(0, 0, 5).scores()
    assert (s["precision"], s["recall"], s["f1"]) == (0.0, 0.0, 0.0)
    s = Counts(0, 4, 0).scores()  # spurious detections of a class that has no columns
    assert (s["precision"], s["recall"], s["f1"]) == (0.0, 1.0, 0.0)


@pytest.mark.parametrize(
    ("shape", "far"),
    [((200, 100), (150.0, 50.0)), ((100, 200), (50.0, 150.0))],
    ids=["tall", "wide"],
)
def test_border_uses_rows_for_height_and_columns_for_width(shape, far) -> None:
    """A column far along the long axis of a non-square frame is inside it: rows are checked against the
    height, columns against the width (a swap dropped the column at row 150 of a 200 x 100 frame)."""
    near = (20.0, 20.0)
    cols = _columns([far, near], surface=[True, False], contrast=[WHITE, WHITE])
    c = match_detections(np.array([far, near]), cols, WHITE, SPEC, shape)
    assert _triple(c["surface"]) == (1, 1, 1)
    assert _triple(c["bulk"]) == (1, 1, 1)


def test_border_excludes_columns_and_detections_within_border_px_of_each_edge() -> None:
    """Ground truth = columns '>= 6 px from the border': on a 40 x 60 frame rows 6..33 and columns 6..53
    are in. Detections in the border are dropped too, so they are neither hits nor false positives."""
    h, w = 40, 60
    inside = [(6.0, 30.0), (33.0, 30.0), (20.0, 6.0), (20.0, 53.0)]
    outside = [(5.0, 30.0), (34.0, 30.0), (20.0, 5.0), (20.0, 54.0)]
    # the inside columns are surface, the outside ones bulk; all are detected exactly
    cols = _columns(inside + outside, surface=[True] * 4 + [False] * 4, contrast=[WHITE] * 8)
    c = match_detections(np.array(inside + outside), cols, WHITE, SPEC, (h, w))
    assert _triple(c["surface"]) == (4, 4, 4)
    assert _triple(c["bulk"]) == (0, 0, 0)


def test_invisible_columns_are_not_ground_truth() -> None:
    """'Ground truth uses only Pt columns whose contrast in the clean image matches the image's polarity
    (an intermediate-contrast column is invisible to any detector)': finding the one visible column of two
    is recall 1, not 0.5."""
    cols = _columns([(50.0, 50.0), (50.0, 80.0)], surface=[True, True], contrast=[WHITE, INTERMEDIATE])
    c = match_detections(np.array([[50.0, 50.0]]), cols, WHITE, SPEC, (128, 96))
    assert _triple(c["surface"]) == (1, 1, 1)
    assert c["surface"].scores()["recall"] == 1.0
    # on a black image the white column is the invisible one
    cols = _columns([(50.0, 50.0), (50.0, 80.0)], surface=[False, False], contrast=[WHITE, BLACK])
    c = match_detections(np.array([[50.0, 80.0]]), cols, BLACK, SPEC, (128, 96))
    assert _triple(c["bulk"]) == (1, 1, 1)


def test_detections_on_support_columns_are_ignored() -> None:
    """'Detections whose nearest column is a support (Ce/O) column are ignored'."""
    cols = _columns(
        [(50.0, 50.0), (50.0, 80.0)], surface=[True, False], contrast=[WHITE, WHITE], species=[Z_PT, Z_CE]
    )
    c = match_detections(np.array([[50.0, 50.0], [50.0, 80.0]]), cols, WHITE, SPEC, (96, 128))
    assert _triple(c["surface"]) == (1, 1, 1)
    assert _triple(c["bulk"]) == (0, 0, 0)


def test_polarity_is_the_majority_of_pt_columns_and_ties_go_to_white() -> None:
    """'White or black: the majority contrast of the visible Pt columns (ties and none -> white)'."""

    def pol(contrast: list[int], species: list[int] | None = None) -> int:
        n = len(contrast)
        return image_polarity(
            {
                "xy": np.zeros((n, 2)),
                "species": np.array(species or [Z_PT] * n),
                "contrast": np.array(contrast),
            }
        )

    assert pol([BLACK, WHITE]) == WHITE  # a tie
    assert pol([BLACK, BLACK, WHITE, WHITE, INTERMEDIATE]) == WHITE  # a tie; intermediate has no vote
    assert pol([BLACK, BLACK, WHITE]) == BLACK
    assert pol([BLACK, INTERMEDIATE, INTERMEDIATE]) == BLACK
    assert pol([]) == WHITE  # none
    assert pol([INTERMEDIATE]) == WHITE  # no visible column
    # support columns have no vote: two black Ce columns do not outvote one white Pt column
    assert pol([WHITE, BLACK, BLACK], species=[Z_PT, Z_CE, Z_CE]) == WHITE


def _clean_image() -> tuple[np.ndarray, dict]:
    """A 64 x 96 clean image (vacuum 1) with three strong Pt columns and one faint (bulk) one."""
    h, w = 64, 96
    yy, xx = np.mgrid[:h, :w]
    xy = [(20.0, 20.0), (20.0, 50.0), (44.0, 35.0), (44.0, 70.0)]
    img = np.ones((h, w))
    for (r, c), a in zip(xy, [0.5, 0.5, 0.5, 0.1], strict=True):
        img += a * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 2.5**2))
    return img, _columns(xy, surface=[True, True, False, False], contrast=[WHITE] * 4)


def test_detection_scores_on_a_non_square_clean_image() -> None:
    """End to end on a 64 x 96 image: the column at column 70 (past row count 64) is found and counted."""
    img, cols = _clean_image()
    s = detection_scores(img, cols, SPEC.model_copy(update={"threshold": 0.01}))
    assert s["surface"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "jaccard": 1.0, "truth": 2.0}
    assert s["bulk"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "jaccard": 1.0, "truth": 2.0}


def test_calibrate_threshold_picks_the_best_mean_f1() -> None:
    """'Pick the LoG threshold maximising mean F1 (surface + bulk) on clean validation images'. At 0.01 all
    four columns are found (F1 1); at 0.1 the faint bulk column is missed (bulk F1 2/3, mean 5/6); at 1.0
    nothing is found (F1 0). The grid is unordered so neither the first nor the last entry is the answer."""
    img, cols = _clean_image()
    best, scores = calibrate_threshold([img], [cols], SPEC, [0.1, 0.01, 1.0])
    assert scores == pytest.approx({0.1: 5 / 6, 0.01: 1.0, 1.0: 0.0})
    assert best == 0.01
