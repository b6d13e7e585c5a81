"""Every `sbd-stream` / `sbd-train` command line in README.md and docs/*.md parses with the real CLI.

Clients are written from the docs alone, so a documented command must be one the installed CLI takes:
the command exists, every option exists (both forms of a --x/--no-x pair), and every value converts to
the option's type and range. test_docs_options.py checks the reverse (every option is named somewhere);
this checks what the docs *say*. Each line goes through click's own parser (``make_context`` on the
command objects typer builds: type conversion, no callback run), so doc conventions are translated
first: `[--opt V]` optional parts, UPPER / `<...>` placeholders, `a|b` alternatives, `...` for elided
arguments, shell wrappers (`nice`, `sudo -u`, env assignments, `torchrun ... --no-python`) and
redirections. A session-30 audit found `sbd-train scenes [--models 1-3]` (docs/emulator.md), an int
option documented with a range as its value.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGS = ("sbd-stream", "sbd-train")
PLACEHOLDER = re.compile(r"^(COMMAND|<.*>|[A-Z][A-Z_0-9./]*)$")
# (program or command, option): deliberate usage errors the docs show on purpose
ALLOWED = {
    ("sbd-train", "--bogus"): "docs/training.md: the exit status of a usage error (2)",
    ("denoise", "--bogus"): "docs/scale-out-offline.md: the exit status of a usage error (2)",
}


def _code(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line, text, fenced) for each logical line of fenced code (continuations joined) and each inline
    code span (which may wrap within its paragraph)."""
    prose: list[tuple[int, str]] = []
    fenced, pending, start = False, "", 0
    for i, raw in enumerate(text.split("\n"), 1):
        if raw.lstrip().startswith("```"):
            fenced, pending = not fenced, ""
            prose.append((i, ""))
        elif fenced:
            start = start if pending else i
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
            else:
                yield start, pending + raw, True
                pending = ""
        else:
            prose.append((i, raw))
    joined = "\n".join(r for _, r in prose)
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", joined):
        yield prose[joined.count("\n", 0, m.start())][0], " ".join(m.group(1).split()), False


def _segments(line: str) -> Iterator[list[str]]:
    """Each simple command of a shell line as tokens, comments dropped."""
    lex = shlex.shlex(re.sub(r"^\s*\$\s+", "", line), posix=True)
    lex.whitespace_split, lex.commenters = True, "#"
    try:
        toks = list(lex)
    except ValueError:
        toks = line.split()
    seg: list[str] = []
    for t in [*toks, ";"]:
        if t in ("&&", "||", "|", ";", "&"):
            if seg:
                yield seg
            seg = []
        else:
            seg.append(t)


def _program(toks: list[str]) -> list[str] | None:
    """The sbd-stream / sbd-train argv a segment runs, past wrappers; None for anything else."""
    toks = list(toks)
    while toks:
        head = toks[0]
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", head) or head in ("exec", "env", "time"):
            toks.pop(0)
        elif head in ("sudo", "nice", "taskset", "timeout", "torchrun"):
            toks.pop(0)
            while toks and (toks[0].startswith("-") or re.fullmatch(r"[0-9][0-9a-fx,.-]*", toks[0])):
                if toks.pop(0) in ("-u", "-g", "-n", "-c") and toks:
                    toks.pop(0)
        else:
            break
    prog = toks[0].rsplit("/", 1)[-1] if toks else ""
    if prog in PROGS and (toks[0] == prog or toks[0].endswith(f"bin/{prog}")):  # not ~/.cache/sbd-stream
        return [prog, *toks[1:]]
    return None


def _normalise(argv: list[str]) -> list[str]:
    """Doc conventions to argv: `<a b>` joined, `[ ]` dropped, `a|b` -> a, redirections dropped."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        t = argv[i]
        if t.startswith("<") and not t.endswith(">"):
            j = i
            while j + 1 < len(argv) and not argv[j].endswith(">"):
                j += 1
            t, i = " ".join(argv[i : j + 1]), j
        i += 1
        t = t.strip("[]")
        if t and not re.match(r"^\d?>", t):
            out.append(t.split("|")[0] if "|" in t and not t.startswith("-") else t)
    return out


def _names(param: Any) -> set[str]:
    """Every spelling of a parameter (typer may keep `--x/--no-x` as one string in ``opts``)."""
    return {n for o in [*param.opts, *getattr(param, "secondary_opts", [])] for n in o.split("/") if n}


def _groups() -> dict[str, Any]:
    from sbd_stream.cli import app as stream

    groups = {"sbd-stream": typer.main.get_command(stream)}
    try:
        from training.cli import app as train
    except ImportError:  # pragma: no cover - training extras absent
        return groups
    groups["sbd-train"] = typer.main.get_command(train)
    return groups


def _problem(group: Any, prog: str, argv: list[str], inline: bool) -> str | None:
    """Why click refuses this documented command line, or None."""
    while argv and argv[0].startswith("-") and argv[0] != "--help":
        if (prog, argv[0]) not in ALLOWED and not any(argv[0] in _names(p) for p in group.params):
            return f"no option {argv[0]} on {prog}"
        argv = argv[1:]
    if not argv or argv[0] == "--help" or PLACEHOLDER.match(argv[0]):
        return None
    command = group.commands.get(argv[0])
    if command is None:
        return f"no command {prog} {argv[0]}"
    params = {n: p for p in command.params for n in _names(p)}
    rest = argv[1:]
    if "--help" in rest:
        return None
    elided = any(t.endswith("...") or t == "…" for t in rest)
    rest = [t for t in rest if not (t.endswith("...") or t == "…")]
    for i, t in enumerate(rest):
        p = params.get(t.split("=")[0]) if t.startswith("-") else None
        if t.startswith("-") and p is None and t != "-":
            return f"no option {t.split('=')[0]} on {prog} {argv[0]}"
        if p is not None and not p.is_flag and "=" not in t:
            if i + 1 == len(rest):
                if inline or elided:  # `sbd-train train --preset`: the option named in prose
                    rest = rest[:-1]
                    break
            elif PLACEHOLDER.match(rest[i + 1]):
                rest[i + 1] = "1"  # N, PATH, <dir>: any value of the option's type
    try:
        command.make_context(argv[0], rest)
    except Exception as e:  # click's / typer's UsageError, BadParameter, MissingParameter
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if "Missing" in type(e).__name__ and (inline or elided):
            return None  # `sbd-stream replay --realtime`: arguments left out in prose
        return message
    return None


def _documented() -> Iterator[tuple[str, list[str], bool]]:
    for f in FILES:
        for line, text, fenced in _code(f.read_text()):
            for k, seg in enumerate(_segments(text)):
                argv = _program(seg)
                if not fenced and k == 0 and argv is None:
                    break  # a span that does not open with a command: prose such as `--out`
                if argv:
                    yield f"{f.relative_to(ROOT)}:{line}", _normalise(argv), not fenced


def test_every_documented_command_line_parses() -> None:
    groups = _groups()
    found, bad = 0, []
    for where, argv, inline in _documented():
        if argv[0] not in groups:  # pragma: no cover - training extras absent
            continue
        found += 1
        problem = _problem(groups[argv[0]], argv[0], argv[1:], inline)
        if problem:
            bad.append(f"{where}: {shlex.join(argv)}\n    -> {problem}")
    assert found > 300, f"only {found} documented command lines found: the extraction broke"
    assert not bad, "documented commands the CLI refuses:\n" + "\n".join(bad)


def test_every_command_relative_option_span_exists() -> None:
    """`emulate --connect`, `replay --limit N`, `evaluate --figure/--no-figure`: the option exists on
    that command (of either program where both have it, as `export`)."""
    groups = _groups()
    owners: dict[str, list[Any]] = {}
    for g in groups.values():
        for name, command in g.commands.items():
            owners.setdefault(name, []).append(command)
    bad, found = [], 0
    for f in FILES:
        for line, text, fenced in _code(f.read_text()):
            toks = text.split()
            if fenced or len(toks) < 2 or toks[0] not in owners or not toks[1].startswith("--"):
                continue
            found += 1
            flags = [t.split("=")[0].strip("[],.:;`") for t in toks[1:] if t.startswith("--")]
            spelled = [o for flag in flags for o in flag.split("/")]
            for o in spelled:
                known = any(o in _names(p) for c in owners[toks[0]] for p in c.params)
                if not known and o != "--help" and (toks[0], o) not in ALLOWED:
                    bad.append(f"{f.relative_to(ROOT)}:{line}: `{text}` -> no option {o} on {toks[0]}")
    assert found > 30, f"only {found} spans found: the extraction broke"
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("sbd-train scenes --models 1-3", "valid integer"),
        ("sbd-stream demo --frame 40", "no option --frame"),
        ("sbd-stream denoize a.h5 b.h5", "no command"),
        ("nice -n 15 sbd-train train --preset detector --no-such", "no option --no-such"),
    ],
)
def test_the_check_catches_what_it_should(line: str, problem: str) -> None:
    """The parser is not lenient by accident: a wrong value, option or command is refused."""
    groups = _groups()
    argv = _program(next(_segments(line)))
    assert argv is not None
    if argv[0] not in groups:  # pragma: no cover - training extras absent
        pytest.skip("training extras absent")
    assert problem in (_problem(groups[argv[0]], argv[0], _normalise(argv)[1:], False) or "")
