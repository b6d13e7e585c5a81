"""Everything a user can set is named somewhere in README.md or docs/*.md (the reverse of `--help`).

A docs audit found options in `--help` (`emulate --connect`, `replay --limit`), settings that
``ServiceSettings`` accepts (`record.record_llr`, `viewer.raw_ring_mb`, ...) and environment variables
the engines read (`SBD_ORT_THREADS`, `SBD_ORT_SPIN`) that no document mentioned. These checks keep a new
one from being added without a line in the docs. They check presence only, not what the line says.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
TEXTS = {p.name: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
DOCS = "\n".join(TEXTS.values())


def _named(option: str) -> bool:
    return re.search(re.escape(option) + r"(?![\w-])", DOCS) is not None


def _options(app: typer.Typer) -> Iterator[tuple[str, list[str]]]:
    """(command, its long option names: both forms of a --x/--no-x pair) for each option in `--help`."""
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        for p in command.params:
            if getattr(p, "param_type_name", "") != "option" or getattr(p, "hidden", False):
                continue
            longs = [o for o in [*p.opts, *p.secondary_opts] if o.startswith("--")]
            if longs and longs != ["--help"]:
                yield name, longs


def _apps() -> list[tuple[str, typer.Typer]]:
    from sbd_stream.cli import app as stream

    try:
        from training.cli import app as train
    except ImportError:  # pragma: no cover - training extras absent
        return [("sbd-stream", stream)]
    return [("sbd-stream", stream), ("sbd-train", train)]


@pytest.mark.parametrize(("prog", "app"), _apps(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_and_option_in_help_is_in_the_docs(prog: str, app: typer.Typer) -> None:
    group = typer.main.get_command(app)
    missing = [f"{prog} {c}" for c in group.commands if not _named(f"{prog} {c}")]  # type: ignore[attr-defined]
    for name, longs in _options(app):
        if not any(_named(o) for o in longs):
            missing.append(f"{prog} {name} {'/'.join(longs)}")
    assert not missing, f"in --help but in no README.md / docs/*.md: {missing}"


def _leaves(model: type[BaseModel], at: str = "") -> Iterator[str]:
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _leaves(ann, f"{at}{name}.")
        else:
            yield f"{at}{name}"


def _toml_keys() -> set[str]:
    keys: set[str] = set()

    def flat(d: dict, at: str = "") -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                flat(v, f"{at}{k}.")
            else:
                keys.add(f"{at}{k}")

    for block in re.findall(r"```toml\n(.*?)```", DOCS, re.S):
        flat(tomllib.loads(block))
    return keys


def test_every_service_setting_is_in_the_docs() -> None:
    """Named as ``section.key``, as its ``SBD_`` variable, in a TOML example, or as `key` in a file
    that has the ``[section]`` table (docs/viewer.md: "Settings (`[viewer]` ...): `enabled`, ...")."""
    from sbd_stream.config import ServiceSettings

    toml = _toml_keys()

    def documented(leaf: str) -> bool:
        if leaf in toml or re.search(r"(?<![\w.])" + re.escape(leaf) + r"(?!\w)", DOCS):
            return True
        if "SBD_" + leaf.upper().replace(".", "__") in DOCS:
            return True
        section, _, key = leaf.rpartition(".")
        pattern = rf"`{re.escape(key)}`|(?<![\w.]){re.escape(key)} ="
        return bool(section) and any(f"[{section}]" in t and re.search(pattern, t) for t in TEXTS.values())

    missing = [leaf for leaf in _leaves(ServiceSettings) if not documented(leaf)]
    assert not missing, f"ServiceSettings keys in no README.md / docs/*.md: {missing}"


def test_every_environment_variable_the_package_reads_is_in_the_docs() -> None:
    names = set()
    for path in (ROOT / "sbd_stream").rglob("*.py"):
        names |= set(
            re.findall(r"(?:environ\.get|getenv|environ\[)\(?\s*[\"'](SBD_[A-Z0-9_]+)", path.read_text())
        )
    assert {"SBD_ORT_THREADS", "SBD_ORT_SPIN"} <= names  # the scan finds what it should
    missing = sorted(n for n in names if not _named(n))
    assert not missing, f"read by sbd_stream/ but in no README.md / docs/*.md: {missing}"
