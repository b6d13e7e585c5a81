"""``live_engine``'s choice on a CUDA machine told to run on its CPU: the fast engine, since the CPU is
what runs it (audit 27, mutant EN3: the check of ``device`` could go and no test saw it, because the
test machines have no CUDA). CUDA is faked by ``torch.cuda.is_available`` alone, as the audit's demo
did: ``live_engine`` itself runs unchanged."""

from __future__ import annotations

import pytest
import torch

from sbd_stream.engines.card import DEFAULT_ENGINE, FAST_ENGINE, live_engine


@pytest.fixture
def cuda_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.usefixtures("cuda_machine")
@pytest.mark.parametrize("device", ["cpu", "cpu:0"])
def test_a_cpu_device_on_a_cuda_machine_gets_the_fast_engine(device: str) -> None:
    assert live_engine(device=device) == FAST_ENGINE


@pytest.mark.usefixtures("cuda_machine")
@pytest.mark.parametrize("device", [None, "cuda", "cuda:1"])
def test_a_gpu_device_on_a_cuda_machine_gets_the_default_engine(device: str | None) -> None:
    assert live_engine(device=device) == DEFAULT_ENGINE


def test_without_cuda_every_device_gets_the_fast_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert live_engine() == live_engine(device="cpu") == FAST_ENGINE
