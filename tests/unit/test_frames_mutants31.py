"""Every ``meta`` key the service writes is renamed when a producer sends it (a mutation round, h31).

``RESERVED_META`` was pinned only as "``SERVICE_META_KEYS`` plus ``meta_dropped``, ``blank`` among them":
with ``vacuum_counts`` dropped from the list, a producer's ``"vacuum_counts": 9`` passed through as the
service's measured vacuum level on every output, and the publisher dropped the service's own one with a
producer's meta over 64 KiB. The keys are taken from what the code writes (the ``llr`` column table, the
edge's pixel counts) and from docs/wire-format.md's list.
"""

from __future__ import annotations

import numpy as np
import pytest

from sbd_stream.frames import RESERVED_META, SERVICE_META_KEYS, own_keys_renamed
from sbd_stream.llr_table import llr_columns
from sbd_stream.service.edge import clean_pixels, hot_threshold

DOCUMENTED = [  # docs/wire-format.md, the ``meta`` row of the header table
    "n_columns", "columns_fields", "evidence_frames", "vacuum_counts", "nonfinite_pixels", "saturated_pixels",
    "hot_pixels", "bright_pixels", "blank", "vacuum_not_flat", "replay_of", "meta_dropped",
]  # fmt: skip


def _written_by_the_service() -> set[str]:
    keys = set(llr_columns(np.zeros((2, 4)), evidence_frames=3, vacuum_counts=0.45)[0])
    nan = np.full((8, 8), 0.5, np.float32)
    nan[0, 0] = np.nan
    keys |= set(clean_pixels(nan)[1])
    top = np.random.default_rng(0).poisson(0.45, (64, 64)).astype(np.uint16)
    top[0, 0], top[1, 1] = 65535, 40  # the dtype maximum and a hot pixel at 0.45 counts/px
    keys |= set(clean_pixels(top, hot_threshold(0.45))[1])
    bright = np.full((8, 8), 30, np.uint16)  # 60x the configured dose: counted too bright, left alone
    keys |= set(clean_pixels(bright, hot_threshold(0.45))[1])
    return keys


def test_the_service_writes_only_keys_it_reserves() -> None:
    written = _written_by_the_service()
    assert {"vacuum_counts", "evidence_frames", "hot_pixels", "bright_pixels", "saturated_pixels"} <= written
    assert written <= SERVICE_META_KEYS, written - SERVICE_META_KEYS


@pytest.mark.parametrize("key", DOCUMENTED)
def test_a_producers_key_named_like_the_services_is_passed_on_renamed(key: str) -> None:
    assert key in RESERVED_META
    assert own_keys_renamed({key: 9, "detector": "x"}) == {f"meta.{key}": 9, "detector": "x"}
