"""Test PSNR against training compute, measured from the weights themselves, never typed in.

    python -m benchmarks.compute_trend                          # every row of the manifest, 24 frames
    python -m benchmarks.compute_trend --max-test-images 2      # a quick look that the chain runs
    python -m benchmarks.compute_trend --manifest benchmarks/compute_trend_quality_manifest.json
                                                                # the wide quality network's trend

The manifest (``benchmarks/compute_trend_manifest.json``) lists each point of the trend: an engine
directory or a bare state-dict checkpoint (``benchmarks/compute_trend/*.pt``, 0.23 MB for the live
network, 3.1 MB for the wide one, committed so anyone with the test data can reproduce the trend), the
run it came from, and the training stage that produced it (world, steps, frames per step, patch), with
``parent`` naming the row it was initialised from; the manifest's ``result`` names the JSON written
(default ``compute_trend``). ``--write-engines DIR`` turns rows back into engine directories (the
architecture of the manifest's ``like`` engine) for any other evaluation. Cumulative steps, frames and
working pixels seen are summed along that chain here, and a stage's ``init_sha256`` (from the run's
summary) is checked against the parent's weights, so a wrong lineage fails instead of drawing a wrong
curve.

Every row is scored exactly as the SBD rows of Table 5.1 at the detector's sampling
(``sbd-train evaluate-detector``): the same evenly spaced test frames of the paper world at 0.060 A,
the same fixed-seed Poisson noise at 0.45 counts/px, through the product's batch stage (bin 4, bicubic
back), the paper's PSNR on the whole frame and in the vacuum, support and particle of each frame's
atomic model (``training.evaluate.detector``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import table, write_result
from sbd_stream.engines.card import WEIGHTS_FILE, load_card, sha256_file, write_engine

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "benchmarks" / "compute_trend_manifest.json"
KEYS = ["paper_psnr", *(f"region_{k}_paper_psnr" for k in ("vacuum", "support", "particle")), "surface_f1"]


def _path(p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else ROOT / p


def _rel(p: Path) -> str:
    q = p.resolve()
    return str(q.relative_to(ROOT)) if q.is_relative_to(ROOT) else str(p)


def _like(manifest: dict[str, Any]) -> Path:
    """The engine whose architecture, tiling and normalisation bare checkpoints of ``manifest`` take."""
    return _path(manifest.get("like", "engines/sbd-unet4-paper"))


def weights_file(row: dict[str, Any]) -> Path:
    """The file holding a row's weights: ``<engine>/model.pt`` or the bare checkpoint."""
    return _path(row["engine"]) / WEIGHTS_FILE if "engine" in row else _path(row["checkpoint"])


def lineage(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per row name, its training stages from the first (random weights) to its own, checked: every
    parent exists, and a stage that states ``init_sha256`` started from its parent's exact weights."""
    by_name = {r["name"]: r for r in rows}
    if len(by_name) != len(rows):
        raise ValueError("compute-trend manifest: row names must be unique")
    out: dict[str, list[dict[str, Any]]] = {}
    cur: dict[str, Any] | None
    for r in rows:
        chain, cur, seen = [], r, set()
        while cur is not None:
            if cur["name"] in seen:
                raise ValueError(f"compute-trend manifest: {r['name']} has a circular lineage")
            seen.add(cur["name"])
            chain.append(cur)
            parent = cur.get("parent")
            if parent is not None and parent not in by_name:
                raise ValueError(f"compute-trend manifest: {cur['name']}'s parent {parent!r} is not a row")
            want = cur["stage"].get("init_sha256")
            if parent is not None and want and sha256_file(weights_file(by_name[parent])) != want:
                raise ValueError(
                    f"compute-trend manifest: {cur['name']} started from weights {want[:12]}..., but its "
                    f"parent {parent} holds {sha256_file(weights_file(by_name[parent]))[:12]}..."
                )
            cur = by_name.get(parent) if parent is not None else None
        out[r["name"]] = [{"row": c["name"], **c["stage"]} for c in reversed(chain)]
    return out


def compute(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Cumulative steps, frames and working megapixels over a row's stages, and steps per world."""
    by_world: dict[str, int] = {}
    for s in stages:
        by_world[s["world"]] = by_world.get(s["world"], 0) + int(s["steps"])
    return {
        "steps": sum(int(s["steps"]) for s in stages),
        "frames": sum(int(s["steps"]) * int(s["frames_per_step"]) for s in stages),
        "megapixels": sum(int(s["steps"]) * int(s["frames_per_step"]) * int(s["patch"]) ** 2 for s in stages)
        / 1e6,
        "steps_by_world": by_world,
    }


def engine_dir_for(row: dict[str, Any], like: Path, scratch: Path) -> Path:
    """An engine directory for the row: its own, or one written from a bare checkpoint with the
    architecture, tiling and normalisation of ``like`` (the weights loaded as a plain state dict)."""
    if "engine" in row:
        return _path(row["engine"])
    card = load_card(like)
    state = torch.load(_path(row["checkpoint"]), map_location="cpu", weights_only=True)
    model = card.build_model()
    model.load_state_dict(state)
    fresh = card.model_copy(
        update={"name": row["name"], "training": {}, "training_data": {}, "metrics": {}, "checksums": {}}
    )
    out = scratch / row["name"].replace("/", "_")
    write_engine(out, model, fresh)
    return out


def evaluate(
    manifest: dict[str, Any],
    test: Path,
    max_test_images: int,
    only: list[str] | None = None,
    engine_kind: str = "onnxruntime",
    device: str | None = None,
    log: Any = print,
    val: Path | None = None,
) -> dict[str, Any]:
    """Score every (or every ``only``) row of ``manifest`` on the paper-world test frames, beside the
    low-pass tuned on the validation models of ``val`` (the training set; default the manifest's)."""
    from training.evaluate.detector import (
        DetectorEvalConfig,
        load_test,
        load_val,
        run_rows,
        sbd_detector_method,
        tuned_rows,
    )
    from training.evaluate.metrics import DetectionSpec, calibrate_threshold

    rows = manifest["rows"]
    chains = lineage(rows)
    like = _like(manifest)
    val = val or _path(manifest.get("val", "data/paper.h5"))
    cfg = DetectorEvalConfig(test=test, val=val, max_test_images=max_test_images, engine_kind=engine_kind)
    items, px = load_test(cfg)
    vals = load_val(cfg, px)
    spec = DetectionSpec(pixel_size_A=px)
    thr, _ = calibrate_threshold([v.clean for v in vals], [v.columns for v in vals], spec, cfg.threshold_grid)
    spec = spec.model_copy(update={"threshold": thr})  # the LoG threshold of Table 5.1: tuned on val
    baselines = [
        {**{k: r[k] for k in ("method", "kind", "params", "n_images", "per_image")}, "metrics": _keep(r)}
        for r in tuned_rows(cfg, vals, items, spec)
    ]
    out = []
    with tempfile.TemporaryDirectory(prefix="compute-trend-") as tmp:
        for r in rows:
            if only and r["name"] not in only:
                continue
            engine_dir = engine_dir_for(r, like, Path(tmp))
            method, info = sbd_detector_method(engine_dir, engine_kind, px, cfg.counts_per_px, device)
            scored = run_rows(method, items, spec, cfg.counts_per_px)
            row = {
                "name": r["name"],
                "weights": _rel(weights_file(r)),
                "weights_sha256": sha256_file(weights_file(r)),
                "note": r.get("note", ""),
                "backend": info["engine"],
                "lineage": chains[r["name"]],
                **compute(chains[r["name"]]),
                "n_images": scored["n_images"],
                "seconds_per_image": scored["seconds_per_image"],
                "metrics": _keep(scored),
                "per_image": scored["per_image"],
            }
            out.append(row)
            m = row["metrics"]["paper_psnr"]
            log(f"{row['name']:<28} {row['steps']:>7} steps  paper PSNR {m['mean']:6.2f} dB (n={m['n']})")
    return {
        "what": manifest.get("what", "test paper PSNR against training compute"),
        "test": str(test),
        "detector_pixel_A": px,
        "counts_per_px": cfg.counts_per_px,
        "noise_seed": cfg.seed,
        "test_images": len(items),
        "test_structures": sorted({it.structure_id for it in items}),
        "val": str(val),
        "detection": spec.model_dump(),
        "baselines": baselines,
        "rows": out,
    }


def _keep(scored: dict[str, Any]) -> dict[str, Any]:
    return {k: scored["metrics"][k] for k in KEYS if k in scored["metrics"]}


def _short(key: str) -> str:
    return key.replace("_paper_psnr", "").replace("region_", "")


def missing_data(test: Path, val: Path) -> str:
    """One line naming the test / validation sets that are not there (``data/`` is git-ignored, so a
    fresh clone has neither) and how to make them, or "": a traceback from h5py said neither."""
    gone = [str(p) for p in (test, val) if not p.is_file()]
    if not gone:
        return ""
    return (
        f"compute_trend: not found: {', '.join(gone)} (data/ is not in a clone; "
        "`sbd-train simulate --preset paper --out data/paper.h5` writes data/paper.h5 and "
        "data/paper-test60pm.h5, docs/training.md; or pass --test / --val)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, default=MANIFEST)
    ap.add_argument(
        "--test", type=Path, default=None, help="default: the manifest's (paper-world test split)"
    )
    ap.add_argument(
        "--max-test-images", type=int, default=24, help="evenly spaced test frames (Table 5.1: 24)"
    )
    ap.add_argument("--only", action="append", help="score only this row (repeatable)")
    ap.add_argument(
        "--val", type=Path, default=None, help="training set whose validation models tune the low-pass"
    )
    ap.add_argument("--engine-kind", default="onnxruntime", help="backend, as Table 5.1 (onnxruntime)")
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--write-engines", type=Path, default=None,
        help="write each (--only) row as an engine <dir>/<name> (to evaluate it elsewhere); score nothing",
    )  # fmt: skip
    args = ap.parse_args(argv)
    manifest = json.loads(args.manifest.read_text())
    if args.write_engines is not None:
        like = _like(manifest)
        for r in manifest["rows"]:
            if not args.only or r["name"] in args.only:
                out = engine_dir_for(r, like, args.write_engines)
                print(f"{r['name']}: {out}" + (" (committed engine, not copied)" if "engine" in r else ""))
        return 0
    test = args.test or _path(manifest.get("test", "data/paper-test60pm.h5"))
    missing = missing_data(test, args.val or _path(manifest.get("val", "data/paper.h5")))
    if missing:
        print(missing, file=sys.stderr)
        return 2
    res = evaluate(
        manifest, test, args.max_test_images, args.only, args.engine_kind, args.device, val=args.val
    )
    given = sys.argv[1:] if argv is None else argv
    res = {"command": shlex.join(["python", "-m", "benchmarks.compute_trend", *given]), **res}
    res["manifest"] = _rel(args.manifest.resolve())
    path = write_result(manifest.get("result", "compute_trend"), res)
    print(
        table(
            [
                {
                    "row": r["name"],
                    "steps": r["steps"],
                    "frames": r["frames"],
                    **{_short(k): r["metrics"].get(k, {}).get("mean") for k in KEYS},
                }
                for r in res["rows"]
            ],
            ["row", "steps", "frames", "paper_psnr", "vacuum", "support", "particle", "surface_f1"],
        )
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
