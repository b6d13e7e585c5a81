"""README tables of the recorder's new-part cost and the fractional resampling (session 31).

Apart from ``readme_speed`` (at ~420 lines) by the house's module size; the same helpers render them.
"""

from __future__ import annotations

from benchmarks.readme_render import cores, load, source


def part_roll() -> str:
    """``python -m benchmarks.bench_part_roll``: bench_part_roll.json, a new recording part's cost."""
    d = load("bench_part_roll.json")
    lines = [
        f"{source(d, 'bench_part_roll.json')}, {cores(d)}, {d['date']}, commit `{d['git']}`; default record "
        "settings; `copy`: groups copied from their template (the recorder), `build`: built object by "
        "object (before session 31), interleaved in one process; median ms):",
        "",
        "| layout | frame | new part (raw + denoised + llr) | its raw / denoised / llr group "
        "| row in an open part |",
        "|---|---|---|---|---|",
    ]
    for r in d["parts"]:
        groups = f"{r['first_raw_ms']:.1f} / {r['first_denoised_ms']:.1f} / {r['first_llr_ms']:.1f}"
        lines.append(
            f"| {r['layout']} | {r['shape']} | {r['new_part_ms']:.1f} | {groups} | {r['steady_ms']:.2f} |"
        )
    live = {(r["layout"], r["recorder"]): r for r in d["live"]}
    idle = live.get(("copy", "idle"))
    per = live.get(("copy", "new_part_per_frame"))
    if idle and per:
        lines += [
            "",
            "A stand-in live lane (1024^2 numpy work and a ZeroMQ send every 25 ms): p50 "
            f"{idle['p50_ms']:.1f} ms with the recorder idle, {per['p50_ms']:.1f} ms while it opens a new "
            "part for every frame.",
        ]
    return "\n".join(lines)


def resample() -> str:
    """``python -m benchmarks.bench_resample``: bench_resample.json, integer bin vs area resampling."""
    d = load("bench_resample.json")
    var = {r["factor"]: r["var_over_mean"] for r in d["variance"]}
    lines = [
        f"{source(d, 'bench_resample.json')}, {cores(d)}, {d['date']}; median of {d['repeats']}; ms per "
        "frame; variance / mean of vacuum counts at 0.45 counts per 0.060 A after resampling, 1 = Poisson; "
        "`by gathers`: the same sums by the per-overlap gathers used before session 32, same run):",
        "",
        "| frame | detector pixel | working frame | to the working pixel | by gathers | "
        "back, bilinear / bicubic | variance / mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in d["speed"]:
        frame = "3838 x 3710 (K2)" if r["frame"] == "k2" else f"{r['frame']}^2"
        back = f"{r['up_bilinear_ms']:.1f} / {r['up_bicubic_ms']:.1f}"
        v, g = var.get(r["factor"]), r.get("down_gathers_ms")
        lines.append(
            f"| {frame} | {r['factor']} | {r['working_px']} | {r['down_ms']:.1f} | "
            f"{'' if g is None else f'{g:.1f}'} | {back} | {'' if v is None else f'{v:.2f}'} |"
        )
    return "\n".join(lines)


def record_rows() -> str:
    """``python -m benchmarks.bench_record_rows``: bench_record_rows.json, the recorder's cost per row."""
    d = load("bench_record_rows.json")
    codes = sorted({r["code"] for r in d["rows"]}, key=lambda c: c != "new")
    lines = [
        f"{source(d, 'bench_record_rows.json')}, {cores(d)}, {d['date']}, commit `{d['git']}`"
        f"{' (uncommitted changes)' if d.get('git_dirty') else ''}; {d['settings']}; median of "
        f"{d['repeats']}; ms per row: the writer thread's CPU time and its wall time (waits for the "
        "interpreter lock included)"
        + ("; `old`: the per-row writes before session 32, interleaved" if "old" in codes else "")
        + "):",
        "",
        "| row | frame | " + " | ".join(f"{c}: CPU / wall" for c in codes) + " |",
        "|---|---|" + "---|" * len(codes),
    ]
    by = {(r["kind"], r["shape"], r["code"]): r for r in d["rows"]}
    for kind in ("raw", "denoised", "llr"):
        for shape in sorted({r["shape"] for r in d["rows"]}, key=lambda s: int(s.split("x")[0])):
            cells = [
                f"{by[kind, shape, c]['cpu_ms']:.2f} / {by[kind, shape, c]['row_ms']:.2f}"
                if (kind, shape, c) in by
                else "-"
                for c in codes
            ]
            lines.append(f"| {kind} | {shape} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
