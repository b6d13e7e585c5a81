"""What a plain ``pip install sbd-stream`` (a wheel, no extras) gets, checked from pyproject.toml.

Why: the repository's own venv has every extra (``make setup``), so nothing in the suite noticed that
``denoise`` (default ``--scheduler local``) imported ``distributed``, which only the ``train`` extra
installed, nor that the wheel shipped no engines. These tests read pyproject.toml and the sources:
every third-party module ``sbd_stream`` imports must come from a base dependency (or be an optional
module on the allow-list below, imported only where a capability check guards it), every engine
folder must be in the wheel's data files, and the engine root resolves to where a wheel puts them.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

OPTIONAL: dict[str, tuple[str, str]] = {
    "tensorrt": ("gpu", "engines/tensorrt_engine.py imports it only after tensorrt_unavailable_reason()"),
    "dectris": ("dectris", "formats/dectris_codec.py: try/except ImportError, hdf5plugin is the fallback"),
}
"""Top-level modules ``sbd_stream`` may import without a base dependency: module -> (the extra that
installs it, the guard that keeps a base install working without it)."""


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, imported at module level outside a ``try``) for each absolute import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    at_top = {id(n) for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out += [(name.split(".")[0], id(node) in at_top) for name in names]
    return out


def _base_distributions() -> set[str]:
    """The base dependencies' names, with what their extras add (``dask[distributed]``: distributed)."""
    names = set()
    for spec in PROJECT["dependencies"]:
        req = Requirement(spec)
        names.add(canonicalize_name(req.name))
        for extra in req.extras:
            for sub in importlib.metadata.requires(req.name) or []:
                dep = Requirement(sub)
                if dep.marker is not None and dep.marker.evaluate({"extra": extra}):
                    names.add(canonicalize_name(dep.name))
    return names


def test_base_dependencies_cover_every_module_sbd_stream_imports() -> None:
    """``distributed`` (denoise's LocalCluster) came only with the ``train`` extra: a base install
    crashed on any input of more than one chunk."""
    base = _base_distributions()
    owner = importlib.metadata.packages_distributions()
    missing, unguarded, seen = [], [], set()
    for path in sorted((ROOT / "sbd_stream").rglob("*.py")):
        for module, top_level in _imports(path):
            if module in sys.stdlib_module_names or module == "sbd_stream":
                continue
            seen.add(module)
            where = str(path.relative_to(ROOT))
            if module in OPTIONAL:
                if top_level:
                    unguarded.append(f"{where}: {module} at module level")
                continue
            dists = {canonicalize_name(d) for d in owner.get(module, [])}
            if not dists & base:
                missing.append(f"{where}: {module} (from {sorted(dists) or 'no installed distribution'})")
    assert not missing, f"not in [project].dependencies: {sorted(set(missing))}"
    assert not unguarded, unguarded
    assert set(OPTIONAL) <= seen, f"stale allow-list entries: {set(OPTIONAL) - seen}"


def test_the_optional_modules_are_in_the_extras_the_allow_list_names() -> None:
    extras = PROJECT["optional-dependencies"]
    named = {
        extra: {canonicalize_name(Requirement(s).name) for s in specs} for extra, specs in extras.items()
    }
    assert "tensorrt" in named["gpu"] and "dectris-compression" in named["dectris"]
    for module, (extra, _why) in OPTIONAL.items():
        assert extra in named, f"{module}: no extra {extra!r} in pyproject"


def test_sbd_train_names_the_extra_of_each_optional_module() -> None:
    """``sbd-train`` says which extra to install for a missing module (training/cli/errors.py): its
    table must agree with pyproject, or the one line would send the user to the wrong extra."""
    from training.cli.errors import EXTRA_OF_MODULE

    extras = PROJECT["optional-dependencies"]
    base = _base_distributions()
    owner = importlib.metadata.packages_distributions()
    for module, extra in EXTRA_OF_MODULE.items():
        dists = {canonicalize_name(d) for d in owner.get(module, [])}
        if not extra:
            assert dists & base, f"{module}: said to be a base dependency"
            continue
        declared = {canonicalize_name(Requirement(s).name) for s in extras[extra]}
        if dists:  # not installed here (tensorrt, pycuda, dectris): the extra must still exist
            assert dists & declared, f"{module}: {sorted(dists)} not in the {extra!r} extra"


def test_every_engine_folder_is_in_the_wheel_data_files() -> None:
    """The wheel held no engine at all; a new engine folder must not be forgotten in the list."""
    data = PYPROJECT["tool"]["setuptools"]["data-files"]
    engines = sorted(p.parent.name for p in (ROOT / "engines").glob("*/card.json"))
    assert engines, "no engines/ in the source tree"
    listed = {
        target: globs for target, globs in data.items() if target.startswith("share/sbd-stream/engines/")
    }
    expected = {f"share/sbd-stream/engines/{name}": [f"engines/{name}/*"] for name in engines}
    assert listed == expected


def test_license_is_an_spdx_expression_with_its_text() -> None:
    """A license table is deprecated (setuptools stops building it in 2027) and MIT needs its text."""
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the sbd-stream authors" in text
    assert any(
        re.fullmatch(r"setuptools>=(\d+)", r) and int(r[12:]) >= 77
        for r in PYPROJECT["build-system"]["requires"]
    )


def test_engine_root_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$SBD_ENGINE_DIR, else the source tree's engines/, else <prefix>/share/sbd-stream/engines (a wheel
    install's; the first prefix that has it), else the first prefix's, which ``info`` refuses."""
    from sbd_stream.engines.card import ArtefactError, default_engine_root

    tree = tmp_path / "src" / "engines"
    prefixes = [tmp_path / "venv", tmp_path / "user"]
    shared = [p / "share" / "sbd-stream" / "engines" for p in prefixes]
    env = tmp_path / "env"
    monkeypatch.delenv("SBD_ENGINE_DIR", raising=False)

    assert default_engine_root(tree, prefixes) == shared[0]  # nothing anywhere: where a wheel puts them
    assert not shared[0].exists()
    shared[1].mkdir(parents=True)
    assert default_engine_root(tree, prefixes) == shared[1]  # e.g. pip install --user
    shared[0].mkdir(parents=True)
    assert default_engine_root(tree, prefixes) == shared[0]  # sys.prefix first
    tree.mkdir(parents=True)
    assert default_engine_root(tree, prefixes) == tree  # a checkout wins over an installed copy
    env.mkdir()
    monkeypatch.setenv("SBD_ENGINE_DIR", str(env))
    assert default_engine_root(tree, prefixes) == env  # the variable wins over everything
    monkeypatch.setenv("SBD_ENGINE_DIR", str(tmp_path / "nope"))
    with pytest.raises(ArtefactError, match=r"SBD_ENGINE_DIR=.*nope does not exist"):
        default_engine_root(tree, prefixes)
    monkeypatch.delenv("SBD_ENGINE_DIR")
    assert default_engine_root() == ROOT / "engines"  # this checkout


def test_an_unknown_engine_name_says_where_it_looked(tmp_path, monkeypatch) -> None:
    """A non-editable install without the share folder, or a typo: the message names the folder searched
    and SBD_ENGINE_DIR (it named only the missing card)."""
    from sbd_stream.engines.card import ArtefactError, resolve_engine_dir

    monkeypatch.setenv("SBD_ENGINE_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtefactError) as e:
        resolve_engine_dir("no-such-engine")
    assert f"looked up in {tmp_path}" in str(e.value) and "SBD_ENGINE_DIR" in str(e.value)
