"""The batch stage before and after a change, side by side in one run: ``bench_capacity`` of an older
commit and of this tree, alternated round by round on the same engine files.

Why alternate in one command: on a shared 2-core machine the rate drifts by 2x between runs, so two
separate runs cannot show a 2x change; rounds old, new, old, new ... see the same conditions, and the
median per side is compared. The old commit is unpacked with ``git archive`` into a temporary folder
(nothing in this checkout changes) and run with its own code on *this* tree's engine directory, so the
code is the only difference.

    python -m benchmarks.bench_capacity_ab --old 34efffe [--rounds 3] [--model NAME] \
        [--old-model NAME] [--sizes 1024] [--bins 4] [--min-seconds 3]

``--old-model`` runs the old side on another engine (default: the same as ``--model``): a change that
ships a cheaper engine is measured against the engine the old commit shipped, each on its own code.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import table, write_result
from sbd_stream.engines.card import resolve_engine_dir

REPO = Path(__file__).resolve().parents[1]


def unpack(commit: str, into: Path) -> str:
    """``commit``'s tree under ``into``; returns its full hash."""
    full = subprocess.run(
        ["git", "rev-parse", commit], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(["git", "archive", full], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return full


def run_side(tree: Path, args: list[str], out: Path) -> dict:
    """One ``bench_capacity`` run of the code in ``tree``; its JSON (written under ``out``)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "SBD_BENCH_RESULTS": str(out)}
    subprocess.run([sys.executable, "-m", "benchmarks.bench_capacity", *args], cwd=tree, env=env, check=True)
    return json.loads((out / "bench_capacity.json").read_text())


def rates(runs: list[dict]) -> dict[tuple[str, int, int], list[float]]:
    """frames/s per (size, bin, threads) over the runs of one side."""
    out: dict[tuple[str, int, int], list[float]] = {}
    for r in runs:
        for row in r["per_worker"]:
            out.setdefault((row["size"], row["bin"], row["threads"]), []).append(row["frames_per_s"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="the commit to compare against (e.g. 34efffe)")
    ap.add_argument("--rounds", type=int, default=3, help="old/new pairs, alternated")
    ap.add_argument("--model", default=None, help="engine name or path (default: the shipped one)")
    ap.add_argument("--old-model", default=None, help="the old side's engine (default: --model)")
    ap.add_argument("--sizes", default="1024")
    ap.add_argument("--bins", default="4")
    ap.add_argument("--min-seconds", type=float, default=3.0)
    a = ap.parse_args()
    engine = resolve_engine_dir(a.model)
    old_engine = resolve_engine_dir(a.old_model) if a.old_model else engine
    args = ["--sizes", a.sizes, "--bins", a.bins, "--min-seconds", str(a.min_seconds)]
    args += ["--scaling-frames", "8"]  # the pool rows are not compared here
    engines = {"old": old_engine, "new": engine}
    with tempfile.TemporaryDirectory(prefix="sbd-ab-") as tmp:
        old_tree = Path(tmp) / "old"
        old_tree.mkdir()
        full = unpack(a.old, old_tree)
        sides: dict[str, list[dict]] = {"old": [], "new": []}
        for i in range(a.rounds):
            for side, tree in (("old", old_tree), ("new", REPO)):
                out = Path(tmp) / f"{side}{i}"
                sides[side].append(run_side(tree, ["--model", str(engines[side]), *args], out))
                print(f"round {i + 1}/{a.rounds} {side} done", flush=True)
    old, new = rates(sides["old"]), rates(sides["new"])
    rows = []
    for key in sorted(new):
        size, k, threads = key
        o, n = statistics.median(old.get(key, [float("nan")])), statistics.median(new[key])
        rows.append(
            {
                "size": size,
                "bin": k,
                "threads": threads,
                "old_frames_per_s": o,
                "new_frames_per_s": n,
                "speedup": n / o if o == o and o > 0 else None,
                "old_runs": old.get(key, []),
                "new_runs": new[key],
            }
        )
    path = write_result(
        "bench_capacity_ab",
        {
            "old_commit": full,
            "engine": engine.name,
            "old_engine": old_engine.name,
            "rounds": a.rounds,
            "rows": rows,
            "note": "median over alternated rounds; whole batch stage per worker, one frame per call",
        },
    )
    cols = ["size", "bin", "threads", "old_frames_per_s", "new_frames_per_s", "speedup"]
    print(table(rows, cols))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
