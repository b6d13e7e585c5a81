"""Skips for what CI installs fail in CI: a registry hiccup must not silently shrink the suite.

`.ci/run` installs the Debian packages ``prometheus`` (with ``promtool``), ``chromium``,
``chromium-driver`` and ``hdf5-tools`` (``h5clear``), then ``make test`` installs the project with its
``dev`` and ``train`` extras (HyperSpy, silx, selenium, PyYAML, ``libertem-live[sim]``, torchrun ...).
A test that needs one of them skips through ``require_module`` / ``require_program`` or with a reason
wrapped in ``ci_provided``; with ``CI=true`` the hooks below turn exactly those skips into failures.
Other skips (no GPU, no TensorRT, not root, the optional ``dectris`` extra) stay skips with their reason.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
TAG = "[installed by .ci/run] "


def ci_provided(reason: str) -> str:
    """A skip reason for something CI installs: outside CI it skips, with ``CI=true`` it fails."""
    return TAG + reason


def require_module(name: str, reason: str) -> ModuleType:
    """``pytest.importorskip`` for a module of the ``dev`` / ``train`` extras."""
    return pytest.importorskip(name, reason=ci_provided(reason))


def require_program(*names: str, reason: str) -> str:
    """The path of the first program found (beside this Python first, then on PATH); else skip."""
    for name in names:
        beside = Path(sys.executable).with_name(name)
        if beside.exists():
            return str(beside)
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(ci_provided(reason))


def _fail_if_ci_skip(rep: Any) -> None:
    if not (CI and rep.skipped):
        return
    longrepr = rep.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    if TAG not in text:
        return
    reason = text.split(TAG, 1)[1]
    rep.outcome = "failed"
    rep.longrepr = f"CI=true and .ci/run installs what this test needs, so it must run, not skip: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    _fail_if_ci_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    outcome = yield
    _fail_if_ci_skip(outcome.get_result())
