"""README tables of speed: the demo, binning, offline denoise, scale-out, the live service, DECTRIS input,
simulation cost and CURVE.

Each function renders one ``<!-- results:NAME -->`` block of README.md from the results file(s) that the
measuring command wrote (its docstring names them); ``readme_tables`` registers them.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.readme_render import RESULTS, command, cores, engine_label, load, source
from sbd_stream.engines.card import DEFAULT_ENGINE

K2 = "3838x3710"


def when(d: dict) -> str:
    """When a results file was measured (``date``, UTC) or, for older files that recorded none, when it
    was committed (``committed``, added afterwards from git log, and labelled so)."""
    if d.get("date"):
        return str(d["date"])
    c = d.get("committed") or {}
    return f"committed {c['date']}" if c.get("date") else "-"


def demo() -> str:
    """``sbd-stream demo --json-out benchmarks/results/demo_*.json``: one row per results file (two-lane
    runs state both lanes; earlier one-lane runs are kept as history), newest first: by ``date``, or for
    files from before the demo wrote one by when they were committed (``committed``), then by name."""
    runs = [(f.name, json.loads(f.read_text())) for f in RESULTS.glob("demo_*.json")]
    if not runs:
        raise FileNotFoundError("no benchmarks/results/demo_*.json")
    runs.sort(key=lambda r: r[0])
    runs.sort(key=lambda r: when(r[1]).removeprefix("committed "), reverse=True)
    lines = [
        "| command | measured | engine | live lane: frames shown (fewest in a second) | "
        "live latency p50 / p99 | complete lane: raw / denoised in the recording | "
        "paper PSNR raw -> denoised |",
        "|---|---|---|---|---|---|---|",
    ]
    for _name, d in runs:
        load_avg = (d.get("load_avg") or {}).get("start")
        measured = when(d) + (f", load {load_avg[0]:.1f}" if load_avg else "")
        engine = f"`{str(d['engine']).split('@')[0]}`"
        psnr = f"{d['paper_psnr_raw_db']:.1f} -> **{d['paper_psnr_denoised_db']:.1f} dB**"
        lanes = d.get("lanes")
        if lanes is None:  # before the two lanes: one queue, what was not denoised overflowed
            lat = d["latency_s"]
            lines.append(
                f"| `{d['command']}` (one lane, before the lanes) | {measured} | {engine} | "
                f"{d['frames_published_received']} of {d['frames_sent']} | "
                f"{lat['p50']:.2f} / {lat['p99']:.2f} s | "
                f"not recorded; {d['denoise_overflow']} `denoise_overflow` | {psnr} |"
            )
            continue
        live, comp = lanes["live"], lanes["complete"]
        rec = comp.get("recording") or {}
        done = (
            f"{rec['raw_frames']} / {rec['denoised_frames']} of {d['frames_sent']} "
            f"({comp['completed_after_live']} completed after the live lane)"
            if rec
            else "not recorded"
        )
        lat = live["latency_s"]
        lines.append(
            f"| `{d['command']}` | {measured} | {engine} | {live['frames']} of {d['frames_sent']} "
            f"({live['per_second_min']} / s) | {lat['p50']:.3f} / {lat['p99']:.3f} s | {done} | {psnr} |"
        )
    return "\n".join(lines)


def binning() -> str:
    """``python -m benchmarks.bench_binning``: bench_binning.json, with the engine it measured."""
    d = load("bench_binning.json")
    lines = [
        f"{source(d, 'bench_binning.json')}, {cores(d)}, {d['backend']}, {when(d)}; "
        f"{engine_label(d, DEFAULT_ENGINE)}):",
        "",
        "| bin | detector pixel | working frame | ms / frame | frames / s | vs 40 Hz |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["speed"]:
        lines.append(
            f"| {r['bin']} | {r['detector_pixel_A']:.2f} A | {r['working_px']} | {r['ms_per_frame']:.1f} | "
            f"{r['frames_per_s']:.1f} | {r['vs_40Hz']:.2f} |"
        )
    q = ", ".join(
        f"{r['bin']} x {r['bin']} {r['paper_psnr_db']:.1f} dB (min {r['min_db']:.1f})" for r in d["quality"]
    )
    lines += ["", f"Binning alone on clean abTEM frames, paper metric: {q}."]
    return "\n".join(lines)


def denoise() -> str:
    """``python -m benchmarks.bench_denoise``: bench_denoise.json (whole 1024^2 frames, one engine)."""
    d = load("bench_denoise.json")
    h, w = d["frame_shape"]
    lines = [
        f"{source(d, 'bench_denoise.json')}, {cores(d)}; engine `{d['engine']}`, exact FoV "
        f"{d['field_of_view']} px; {h} x {w} frames, {d['frames_per_call']} per call; input: {d['input']}; "
        f"seam error: {d['seam_metric']}):",
        "",
        "| method | tile (margin, overlap) | ms / frame | frames / s | vs paper's tiling | seam error |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        if "ms_per_frame" not in r:
            lines.append(f"| {r['method']} | - | - | - | - | {r.get('note', 'not measured')} |")
            continue
        seam = "0 (no seam)" if r["seam_lines"] == 0 else f"{r['seam_error']:.3f}"
        lines.append(
            f"| {r['method']} | {r['tile']} ({r['margin']}, {r['overlap']}), {r['tiles_per_frame']} per "
            f"frame | {r['ms_per_frame']:.0f} | {r['frames_per_s']:.2f} | {r['speedup_vs_paper']:.1f}x | "
            f"{seam} |"
        )
    return "\n".join(lines)


def _fps(rows: list[dict], size: str, b: int, threads: int | None = None) -> float | None:
    hits = [r for r in rows if r["size"] == size and r["bin"] == b]
    if threads is not None:
        hits = [r for r in hits if r["threads"] == threads]
    else:
        hits = sorted(hits, key=lambda r: -r["threads"])
    return hits[0]["frames_per_s"] if hits else None


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def capacity() -> str:
    """``python -m benchmarks.bench_capacity``: bench_capacity.json (per worker, 2 / 1 threads)."""
    d = load("bench_capacity.json")
    pw, cap = d["per_worker"], d["capacity_40Hz"]
    lines = [
        f"`{command(d)}` (`benchmarks/results/bench_capacity.json`, {cores(d)}, {d.get('note') or '-'}; "
        f"{when(d)}; {engine_label(d, DEFAULT_ENGINE)}; frames/s per worker with 2 / 1 threads):",
        "",
        "| frame | bin 1 | bin 2 | bin 4 (0.060 A detector) | workers of 2 cores for 40 Hz at bin 4 |",
        "|---|---|---|---|---|",
    ]
    for size in sorted({r["size"] for r in pw}, key=lambda s: s != "1024x1024"):
        cells = [f"{_f(_fps(pw, size, b, 2))} / {_f(_fps(pw, size, b, 1))}" for b in (1, 2, 4)]
        need = next((c["workers_for_40Hz"] for c in cap if c["size"] == size and c["bin"] == 4), "-")
        name = "K2 3838 x 3710" if size == K2 else size.replace("x", " x ")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {need} |")
    return "\n".join(lines)


def capacity_ab() -> str:
    """``python -m benchmarks.bench_capacity_ab``: bench_capacity_ab.json (an older commit and this tree,
    alternated round by round; each side on its own engine)."""
    d = load("bench_capacity_ab.json")
    old_engine = d.get("old_engine", d["engine"])
    lines = [
        f"`{command(d)}` (`benchmarks/results/bench_capacity_ab.json`, {cores(d)}; old: commit "
        f"`{d['old_commit'][:7]}` with engine `{old_engine}`; new: this tree with engine `{d['engine']}`; "
        f"median of {d['rounds']} alternated rounds, frames/s per worker, one frame per call):",
        "",
        "| frame | bin | threads | old | new | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        up = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        lines.append(
            f"| {r['size'].replace('x', ' x ')} | {r['bin']} | {r['threads']} | "
            f"{r['old_frames_per_s']:.1f} | {r['new_frames_per_s']:.1f} | {up} |"
        )
    return "\n".join(lines)


def capacity_h200() -> str:
    """``python -m benchmarks.bench_capacity --engine auto ...`` on the H200:
    bench_capacity_h200_*.json, one row per engine (the run's full thread count), each row with its own
    command, and the torch build and Python the runs used (the lent machine's, not the project's pin)."""
    files = sorted(RESULTS.glob("bench_capacity_h200_*.json"))
    if not files:
        raise FileNotFoundError("no benchmarks/results/bench_capacity_h200_*.json")
    runs = [json.loads(f.read_text()) for f in files]
    builds = sorted({f"torch {d['machine'].get('torch')}, Python {d['machine'].get('python')}" for d in runs})
    lines = [
        f"one row per `benchmarks/results/bench_capacity_h200_*.json`, each opening with its command; "
        f"{cores(runs[0])}; {' / '.join(builds)} (the lent machine's build, not the project's pinned torch); "
        "frames/s per worker, one frame per call, upload and download included:",
        "",
        "| command | engine | 1024^2 bin 1 | 1024^2 bin 4 | K2 bin 1 | K2 bin 4 | "
        "GPUs for K2 at 40 Hz, bin 4 |",
        "|---|---|---|---|---|---|---|",
    ]
    k2_cost = []
    for d in runs:
        pw = d["per_worker"]
        cells = [_f(_fps(pw, s, b)) for s in ("1024x1024", K2) for b in (1, 4)]
        need = next(
            (c["workers_for_40Hz"] for c in d["capacity_40Hz"] if c["size"] == K2 and c["bin"] == 4), "-"
        )
        lines.append(
            f"| `{command(d)}` | {engine_label(d, DEFAULT_ENGINE)} | " + " | ".join(cells) + f" | {need} |"
        )
        small, k2 = _fps(pw, "1024x1024", 4), _fps(pw, K2, 4)
        if small and k2:
            k2_cost.append(
                f"`{Path(d['engine']).name}` {small / d['rate_hz']:.1f}x the {d['rate_hz']:g} Hz rate at "
                f"1024^2, a K2 frame costing {small / k2:.1f}x a 1024^2 one"
            )
    if k2_cost:
        lines += ["", "At bin 4: " + "; ".join(k2_cost) + "."]
    return "\n".join(lines)


def scale_out() -> str:
    """The worker pool (bench_capacity.json ``scaling``), offline Dask (offline_dask.json) and the workers'
    reads of a stack chunk by chunk (stack_read.json)."""
    cap, dask, reads = load("bench_capacity.json"), load("offline_dask.json"), load("stack_read.json")
    one, two = sorted(cap["scaling"], key=lambda r: r["workers"])[:2]
    s = cap["scaling_summary"]
    rows = {(r["run"], r["workers"]): r for r in dask["rows"]}
    single = rows[("single process (denoise_file)", 1)]
    cold, warm = rows[("dask local, cold", 2)], rows[("dask local, warm", 2)]
    identical = all(dask["bit_identical_to_single"].values())
    lines = [
        "| measure | result |",
        "|---|---|",
        f"| worker pool, {one['workers']} worker x {one['threads_each']} threads vs {two['workers']} "
        f"workers x {two['threads_each']} thread (same cores, 1024^2 bin 4, {one['frames']} frames; "
        f"`{command(cap)}`; {engine_label(cap, DEFAULT_ENGINE)}) | "
        f"{one['frames_per_s']:.1f} vs {two['frames_per_s']:.1f} frames/s: "
        f"{s['speedup_2_vs_1_worker_same_cores']:.2f}x; {100 * s['efficiency_vs_2x_half_worker']:.0f} % of "
        "two independent single-core workers |",
        f"| offline `denoise`, {dask['frames']} frames {dask['frame'][0]}^2 (`{command(dask)}`; "
        f"{engine_label(dask, DEFAULT_ENGINE)}) | "
        f"single process {single['frames_per_s']:.1f} frames/s; Dask local 2 workers "
        f"{cold['frames_per_s']:.1f} (cold: cluster start + engine load) / {warm['frames_per_s']:.1f} "
        f"(warm) = {cold['vs_single']:.2f}x / {warm['vs_single']:.2f}x; "
        + (
            "every output bit-identical to the single process |"
            if identical
            else "outputs NOT bit-identical |"
        ),
        f"| a worker reading {reads['frames']} frames of {reads['frame'][0]}^2 in chunks of "
        f"{reads['chunk_frames']}, opened per chunk vs kept open (`{command(reads)}`) | "
        + "; ".join(
            f"{r['layout']} {r['per_chunk_s']:.3g} vs {r['kept_open_s']:.3g} s" for r in reads["rows"]
        )
        + " |",
    ]
    return "\n".join(lines)


def _ms(rows: list[dict], key: str) -> str:
    return " / ".join(f"{r[key]:.1f}" for r in rows)


def live_service() -> str:
    """``python -m benchmarks.bench_ingest``, ``bench_recorder``, ``bench_pipeline``: their JSON files."""
    ing, rec, pipe = load("bench_ingest.json"), load("bench_recorder.json"), load("bench_pipeline.json")
    lines = [
        f"`{ing['command']}`, `{rec['command']}`, `{pipe['command']}` "
        "(`benchmarks/results/bench_ingest.json`, `bench_recorder.json`, `bench_pipeline.json`; "
        f"{cores(rec)}):",
        "",
        "| measure | result |",
        "|---|---|",
    ]
    ing_when = f"measured {when(ing)[:10]} at commit `{ing['machine'].get('git') or '?'}`"
    for r in ing["results"]:
        lines.append(
            f"| ingest {r['shape']} {r['dtype']} on loopback vs a bare pyzmq receive loop ({ing_when}) | "
            f"{r['ingest_fps']:.0f} vs {r['bare_fps']:.0f} frames/s, ratio {r['ratio']:.2f} "
            f"({r['ingest_GBps']:.1f} GB/s) |"
        )
    groups: dict[tuple[str, int | None], list[dict]] = {}
    for r in rec["results"]:
        groups.setdefault((r["compression"], r["compress_threads"]), []).append(r)
    for (comp, threads), rows in groups.items():
        how = {None: "", 0: ", HDF5 filter on the writer thread (`compress_threads = 0`)"}.get(
            threads, f", compressor pool (`record.compress_threads` = {threads})"
        )
        cells = "; ".join(
            f"{'K2' if r['shape'] == K2 else r['shape']} {r['dtype']} {r['fps']:.0f} frames/s = "
            f"{r['x_detector_40Hz']:.2f}x the 40 Hz detector"
            + (f", ratio {r['compression_ratio']:.1f}" if comp != "none" else "")
            for r in rows
        )
        lines.append(f"| recorder, {comp}{how} | {cells} |")
    pc, wr, need = (
        rec["k2_per_core_compress_fps"],
        rec["k2_writer_direct_chunk_fps"],
        rec["k2_cores_for_2x_detector"],
    )
    lines.append(
        "| K2 per core: compressing to bitshuffle-LZ4 chunks / writing them (`write_direct_chunk`) | "
        + ", ".join(f"{t} {pc[t]:.0f} / {wr[t]:.0f}" for t in pc)
        + " frames/s; dedicated compression cores for 80 frames/s (2x): "
        + ", ".join(f"{t} {need[t]}" for t in need)
        + " |"
    )
    eff, lat = pipe["efficiency"], pipe["latency"]
    lines += [
        f"| pipeline efficiency, `replay` / bare engine, same frames ({pipe['model']}, "
        + " / ".join(e["frame"] for e in eff)
        + ") | "
        + " / ".join(f"{e['efficiency']:.2f}" for e in eff)
        + " (publishing too: "
        + " / ".join(f"{e['efficiency_publish']:.2f}" for e in eff)
        + ") |",
        f"| end-to-end latency at {lat[0]['rate_hz']} Hz, "
        + " / ".join(r["frame"] for r in lat)
        + " frames | "
        + f"p50 {_ms(lat, 'p50_ms')} ms, p99 {_ms(lat, 'p99_ms')} ms |",
        "| `sbd-stream demo` (1024^2 at 0.060 A, binned 4 x 4, shipped engine, CPU, `lossless`) | the demo "
        "table above (`benchmarks/results/demo_*.json`) |",
    ]
    return "\n".join(lines)


def dectris() -> str:
    """``python -m benchmarks.bench_dectris``: dectris.json (uint16) and dectris_uint8.json, K2 frames."""
    runs = [load(f) for f in ("dectris.json", "dectris_uint8.json") if (RESULTS / f).is_file()]
    if not runs:
        raise FileNotFoundError("no benchmarks/results/dectris*.json")
    dts = [d["frame"]["dtype"] for d in runs]
    lines = [
        "; ".join(f"`{d['command']}`" for d in runs)
        + " (`benchmarks/results/dectris.json`, `dectris_uint8.json`; "
        + f"{' x '.join(map(str, runs[0]['frame']['shape']))} frames):",
        "",
        "| measure | " + " | ".join(dts) + " |",
        "|---|" + "---|" * len(runs),
    ]

    def ingest(d: dict, kind: str) -> str:
        r = next(r for r in d["ingest"] if r["input"] == kind)
        return f"{r['frames_per_s']:.0f} frames/s, {r['GB_per_s_pixels']:.2f} GB/s of pixels"

    def ms(rows: list[dict], key: str, val: str) -> str:
        found = " / ".join(f"{r['ms_per_frame']:.1f}" for r in rows if r[key] == val)
        if not found and val == "dectris":  # the codec of the optional extra, absent where it was measured
            return "n/a (optional `dectris-compression` not installed)"
        return found

    lines += [
        "| wire v1 raw ingest | " + " | ".join(ingest(d, "wire-v1-raw") for d in runs) + " |",
        "| DECTRIS stream v1 bslz4 ingest incl. decompression (MB on the wire) | "
        + " | ".join(
            f"{ingest(d, 'dectris-v1-bslz4')} ({d['frame']['bslz4_bytes'] / 1e6:.1f} MB)" for d in runs
        )
        + " |",
        "| decompressing a frame, `dectris` / `hdf5plugin` codec | "
        + " | ".join(
            f"{ms(d['decompress'], 'backend', 'dectris')} / {ms(d['decompress'], 'backend', 'hdf5plugin')} ms"
            for d in runs
        )
        + " |",
        "| recording a frame: recompress vs `write_direct_chunk` of the bslz4 payload | "
        + " | ".join(
            f"{ms(d['record'], 'mode', 'recompress')} vs {ms(d['record'], 'mode', 'direct_chunk')} ms"
            for d in runs
        )
        + " |",
    ]
    return "\n".join(lines)


def edge() -> str:
    """``python -m benchmarks.bench_edge``: bench_edge.json, the edge's cost per received frame."""
    d = load("bench_edge.json")
    sizes = list(dict.fromkeys(r["frame"] for r in d["rows"]))
    cases = list(dict.fromkeys(r["case"] for r in d["rows"]))
    ms = {(r["frame"], r["case"]): r["ms"] for r in d["rows"]}
    lines = [
        f"{source(d, 'bench_edge.json')}, {cores(d)}; uint16, {d['dose_counts_per_px']} counts/px, "
        f"median of {d['repeats']}; ms per frame, in the receiving thread):",
        "",
        "| detector state | " + " | ".join(sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for c in cases:
        lines.append(f"| {c} | " + " | ".join(f"{ms[(s, c)]:.2f}" for s in sizes) + " |")
    return "\n".join(lines)


def simulation() -> str:
    """``python -m benchmarks.bench_simulation``: simulation.json (timed, then extrapolated)."""
    d = load("simulation.json")
    lines = [
        f"{source(d, 'simulation.json')}, {d['machine']['cpus']} cores; {d['note']}):",
        "",
        "| preset | image | images | s / exit wave | s / defocus image | core-hours | hours on 2 / 8 / 32 / "
        "128 Dask workers |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in d["results"]:
        x = r["extrapolated"]
        hours = " / ".join(f"{x['hours_on_workers'][str(n)]:.2g}" for n in (2, 8, 32, 128))
        lines.append(
            f"| {r['preset']} | {r['image_px']} px at {r['pixel_size_A']:.3f} A | {x['images']:,} | "
            f"{x['s_per_exit_wave']:.1f} | {x['s_per_defocus_image']:.2f} | {x['core_hours']:.2f} | {hours} |"
        )
    return "\n".join(lines)


def curve() -> str:
    """``python -m benchmarks.bench_curve``: curve.json."""
    d = load("curve.json")
    by = {r["curve"]: r for r in d["results"]}
    dropped = [  # recorded since the time stops at the last receipt; PUB drops small messages at its HWM
        f"{r['dropped']} of {r['sent']} {'with CURVE' if r['curve'] else 'plain'}"
        for r in d["results"]
        if r.get("dropped")
    ]
    return (
        f"{source(d, 'curve.json')}, {d['machine']['cpus']} cores, load average {d['load_avg_1m']:.1f}): "
        f"{d['message_mb']} MB messages on loopback, {by[False]['gb_per_s']:.2f} GB/s plain, "
        f"{by[True]['gb_per_s']:.2f} GB/s with CURVE ({d['curve_slowdown']:.1f}x slower)"
        + (f"; messages dropped by PUB: {', '.join(dropped)}." if dropped else ".")
    )
