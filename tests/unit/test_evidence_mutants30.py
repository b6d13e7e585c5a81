"""Evidence frames' dose band pinned at its edges (mutation round h30).

``DOSE_BAND = (0.8, 1.25)``: 'A dose within this factor of another is the same beam'; frames 'whose dose
lies within band of frame j's' are summed. Both edges are inside the band.
"""

from __future__ import annotations

import pytest
import torch

from sbd_stream.compute.evidence import DOSE_BAND, evidence_counts


@pytest.mark.parametrize(("mine", "theirs"), [(1.0, 1.25), (1.25, 1.0)])
def test_an_evidence_frame_exactly_at_the_band_edge_is_kept(mine: float, theirs: float) -> None:
    """Ratios 1.25 and 0.8 (exactly the band's edges) are the same beam: the frame is summed, scaled by
    its dose."""
    counts = torch.tensor([theirs, mine]).reshape(2, 1, 1).expand(2, 2, 2).clone()
    level = counts.mean(dim=(1, 2))
    blank = torch.tensor([False, False])
    scored, scale, used, left = evidence_counts(counts, [[0]], 1, level, blank)
    assert float(level[0] / level[1]) in (pytest.approx(DOSE_BAND[0]), pytest.approx(DOSE_BAND[1]))
    assert used.tolist() == [1.0] and left.tolist() == [0.0]
    assert scale.tolist() == pytest.approx([theirs / mine])
    assert torch.equal(scored[0], counts[0])
