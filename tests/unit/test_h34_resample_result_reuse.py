"""rebin_area reuses the memory of a released result (no per-call page faults) and never a held one.

A fractional factor's result over glibc's 32 MiB mmap threshold (a K2 frame at r = 1.2: 40 MB) cost
~17 ms of first-touch page faults per call; the memory of an earlier result that nobody holds any more
is now reused. These tests pin that the reuse happens (counted page faults, not time) and that it is
invisible: a result, a view or row of it, its numpy array or storage, held by the caller or another
thread, is never written by a later call, and every result equals the fresh computation bit for bit.
"""

from __future__ import annotations

import resource
import threading

import numpy as np
import pytest
import torch

from sbd_stream.compute import resample
from sbd_stream.compute.resample import _cols, _rows, axis_plan, rebin_area, unbin_area

K2 = (3838, 3710)
RATIOS = [1.2, 0.24 / 0.144, 2.4, 1.5, 0.24 / 0.22]
RESULTS_KEPT_PLUS = 8  # more results than a thread keeps buffers of


def fresh(x: torch.Tensor, r: float) -> torch.Tensor:
    """The block-product path with every buffer freshly allocated (the code before buffer reuse)."""
    h, w = x.shape[-2:]
    rows, cols = axis_plan(h, r, "cpu"), axis_plan(w, r, "cpu")
    assert rows is not None and cols is not None
    return _cols(_rows(x.to(torch.float32), rows), cols)


def frame(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).poisson(2.0, shape).astype(np.float32))


def fresh_back(binned: torch.Tensor, r: float, shape: tuple[int, int], mode: str) -> torch.Tensor:
    """``unbin_area`` into fresh memory (ATen's functional op, the code before buffer reuse)."""
    op = torch.ops.aten.upsample_bilinear2d if mode == "bilinear" else torch.ops.aten.upsample_bicubic2d
    return op.default(binned.unsqueeze(1) / float(r * r), list(shape), False, float(r), float(r))[:, 0]


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_a_released_k2_result_is_reused_without_page_faults() -> None:
    x = frame((1, *K2), 0)
    expected = fresh(x, 1.2)
    rebin_area(x, 1.2)  # the plans and buffers of this shape
    pages = expected.nbytes // 4096
    before = minor_faults()
    for _ in range(3):
        got = rebin_area(x, 1.2)
        assert torch.equal(got, expected)
        del got
    assert minor_faults() - before < pages // 4  # was 3 x 9659: a fresh 40 MB result each call


def test_a_released_k2_frame_back_is_reused_without_page_faults() -> None:
    b = frame((1, 3199, 3092), 1)
    expected = fresh_back(b, 1.2, K2, "bilinear")
    unbin_area(b, 1.2, K2, "bilinear")
    before = minor_faults()
    for _ in range(3):
        got = unbin_area(b, 1.2, K2, "bilinear")
        assert torch.equal(got, expected)
        del got
    assert minor_faults() - before < expected.nbytes // 4096 // 4  # was 3 x 13,900: 57 MB each call


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("r", RATIOS)
def test_results_back_equal_the_fresh_ones_while_earlier_ones_are_held(mode: str, r: float) -> None:
    shape = (70, 53)
    held, expected = [], []
    for seed in range(RESULTS_KEPT_PLUS):
        b = frame((2, *(resample.rebinned_side(n, r) for n in shape)), seed)
        held.append(unbin_area(b, r, shape, mode)[1])  # a view of one frame, as the batch stage keeps
        expected.append(fresh_back(b, r, shape, mode)[1])
        unbin_area(b * 2, r, shape, mode)  # released at once
    for got, want in zip(held, expected, strict=True):
        assert torch.equal(got, want)


def test_the_way_back_still_carries_gradients() -> None:
    """``out=`` records no gradient: a tensor that needs one takes ATen's functional op."""
    b = frame((1, 10, 12), 3).requires_grad_()
    unbin_area(b, 1.2, (12, 14), "bilinear").sum().backward()
    assert b.grad is not None and torch.equal(b.grad, fresh_back_grad(b.detach(), 1.2, (12, 14)))


def fresh_back_grad(b: torch.Tensor, r: float, shape: tuple[int, int]) -> torch.Tensor:
    b = b.clone().requires_grad_()
    fresh_back(b, r, shape, "bilinear").sum().backward()
    assert b.grad is not None
    return b.grad


@pytest.mark.parametrize("r", RATIOS)
@pytest.mark.parametrize("shape", [(1, 97, 131), (3, 64, 50), (2, 389, 302), (1, 1, 1)])
def test_results_equal_the_fresh_computation_while_earlier_ones_are_held(
    r: float, shape: tuple[int, ...]
) -> None:
    held, expected = [], []
    for seed in range(4):
        x = frame(shape, seed)
        held.append(rebin_area(x, r))
        expected.append(fresh(x, r))
        rebin_area(frame(shape, 100 + seed), r)  # released at once: its memory goes round again
    for got, want in zip(held, expected, strict=True):
        assert torch.equal(got, want)


def test_no_kind_of_holder_is_overwritten_by_later_calls() -> None:
    """A view, the unbound rows BinnedCache keeps, the .numpy() array, the storage alone: each keeps the
    memory of its result from reuse, through more calls than buffers are kept."""
    shape, r = (2, 120, 90), 1.2
    xs = [frame(shape, s) for s in range(5)]
    want = [fresh(x, r) for x in xs]
    view = rebin_area(xs[0], r)[1, 3:9]
    rows = rebin_area(xs[1], r).unbind(0)
    array = rebin_area(xs[2], r).numpy()
    out = rebin_area(xs[3], r)
    storage, ptr = out.untyped_storage(), out.data_ptr()
    del out
    for s in range(20):
        rebin_area(frame(shape, 50 + s), r)
    assert torch.equal(view, want[0][1, 3:9])
    assert torch.equal(torch.stack(rows), want[1])
    assert np.array_equal(array, want[2].numpy())
    kept = torch.empty(0).set_(storage, 0, want[3].shape)
    assert kept.data_ptr() == ptr and torch.equal(kept, want[3])


def test_a_result_handed_to_another_thread_is_kept_until_it_lets_go() -> None:
    shape, r = (1, 150, 140), 1.2
    x = frame(shape, 7)
    handed: list[torch.Tensor] = [rebin_area(x, r)]
    got = threading.Event()
    done = threading.Event()
    seen: list[bool] = []

    def consumer() -> None:
        mine = handed.pop()
        got.set()
        done.wait(30)
        seen.append(torch.equal(mine, fresh(x, r)))

    t = threading.Thread(target=consumer)
    t.start()
    got.wait(30)
    for s in range(20):
        rebin_area(frame(shape, 60 + s), r)
    done.set()
    t.join(30)
    assert seen == [True]


def test_concurrent_callers_each_get_their_own_results() -> None:
    shape = (1, 200, 170)
    errors: list[str] = []

    def worker(seed: int) -> None:
        for i in range(20):
            x = frame(shape, seed * 100 + i)
            r = RATIOS[(seed + i) % len(RATIOS)]
            if not torch.equal(rebin_area(x, r), fresh(x, r)):
                errors.append(f"worker {seed} call {i}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []


def test_the_storage_use_count_torch_reports_sees_views() -> None:
    """The private counter reuse rests on (``torch._C._storage_Use_Count``): a view raises it."""
    kept = [torch.empty(8).untyped_storage()]
    assert resample._released(kept, 0, 32)
    t = torch.empty(0).set_(kept[0], 0, (8,))
    view = t[2:4]
    del t
    assert not resample._released(kept, 0, 32)
    del view
    assert resample._released(kept, 0, 32)
    assert not resample._released(kept, 0, 16)  # another size is never handed out
