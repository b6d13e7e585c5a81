"""Options shared by several commands, and the one function that turns flags into settings.

Every flag that names a setting defaults to None, meaning "not given": the TOML file, the SBD_*
environment and the settings' own defaults decide (``sbd_stream/config.py``). ``settings_from_flags``
is the only place that knows which flag fills which field of the settings tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sbd_stream.cli.app import fail, settings_error

if TYPE_CHECKING:
    from sbd_stream.config import DetectorSettings, ServiceSettings

Engine = Annotated[str | None, typer.Option(help="Backend: auto, tensorrt, onnxruntime or torch")]
Model = Annotated[
    str | None,
    typer.Option(help="Engine name under engines/ or a path (default: by device and job: `sbd-stream info`)"),
]
Device = Annotated[str | None, typer.Option(help="cpu or cuda[:N] (default: the best available)")]
Batch = Annotated[int | None, typer.Option(min=1, help="Denoise up to this many frames at once")]
Live = Annotated[
    bool | None,
    typer.Option(
        "--live/--no-live",
        help="Live lane (default on): denoise and publish only the newest waiting frame, older ones go to "
        "the complete lane; --no-live: one lane, every frame in order",
    ),
]
Complete = Annotated[
    bool | None,
    typer.Option(
        "--complete/--no-complete",
        help="Complete lane (default on): the frames the live lane skipped, denoised into the recording "
        "(not published) when the engine is free and at shutdown",
    ),
]
Policy = Annotated[str | None, typer.Option(help="Older name of --live/--no-live: latest or lossless")]
Likelihood = Annotated[
    bool | None, typer.Option("--likelihood/--no-likelihood", help="Likelihood-ratio maps too")
]
EvidenceFrames = Annotated[
    int | None,
    typer.Option(
        "--evidence-frames",
        min=0,
        max=16,
        help="Score columns on N other frames' counts (unbiased; static specimen; implies --likelihood)",
    ),
]
PixelSize = Annotated[
    float | None,
    typer.Option("--pixel-size", help="Detector pixel at the specimen, A (default 0.060, the paper's K2)"),
]
DosePerArea = Annotated[
    float | None,
    typer.Option("--dose", help="Dose per frame, e/A^2 (default 125, the paper's; or --counts-per-px)"),
]
CountsPerPx = Annotated[
    float | None,
    typer.Option("--counts-per-px", help="Dose as counts per detector pixel in vacuum per frame"),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v")]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers", min=1, help="Engine workers (default: one per GPU, else 1; a CPU's cores are split)"
    ),
]
Scheduler = Annotated[
    str,
    typer.Option(
        "--scheduler",
        help="Offline: local (a Dask cluster on this machine), tcp://host:port (an existing Dask "
        "scheduler) or none (in this process); docs/scale-out-offline.md",
    ),
]
DaskWorkers = Annotated[
    int | None,
    typer.Option("--dask-workers", min=1, help="Local cluster workers (default: min(cores, chunks))"),
]
Compression = Annotated[
    str | None,
    typer.Option(
        "--compression",
        help="Recording compression: bitshuffle-lz4 (default; readers need hdf5plugin), gzip or none "
        "(replay --offline: its --out's)",
    ),
]
OutputCompression = Annotated[
    str | None,
    typer.Option(
        "--compression",
        help="OUTPUT's compression: bitshuffle-lz4 (default; readers need hdf5plugin), gzip (any HDF5 "
        "reader: plain h5py, MATLAB, Fiji, h5dump) or none; a resumed OUTPUT.partial keeps its own",
    ),
]
"""``denoise``'s ``--compression``: the names ``Compression`` takes, for the denoised output."""
ConfigFile = Annotated[
    Path | None,
    # readable=False: the settings loader reads it, so an unreadable file is one `error:` line (click's own
    # check printed its usage box, audit h30)
    typer.Option("--config", "-c", help="TOML settings file (see docs/service.md)", readable=False),
]


@dataclass
class Flags:
    """What a command was given; None everywhere means "not given" (the settings decide)."""

    pixel_size: float | None = None
    dose: float | None = None
    counts_per_px: float | None = None
    recorded: dict[str, float] | None = None  # the sampling a recording states (replay): flags win
    input: str | None = None
    mode: str | None = None  # bind or connect
    dialect: str | None = None
    socket_type: str | None = None
    series_timeout: float | None = None
    output: str | None = None
    publish: bool | None = None
    record_dir: Path | None = None
    record: bool | None = None
    compression: str | None = None
    engine: str | None = None
    model: str | None = None
    device: str | None = None
    batch: int | None = None
    policy: str | None = None
    live: bool | None = None
    complete: bool | None = None
    workers: int | None = None
    devices: str | None = None  # comma-separated
    threads: int | None = None
    tile: int | None = None
    margin: int | None = None
    orientations: int | None = None
    upsample: str | None = None  # auto, bicubic or bilinear
    likelihood: bool | None = None
    evidence_frames: int | None = None
    metrics: bool | None = None
    metrics_port: int | None = None
    viewer: bool | None = None
    viewer_port: int | None = None


def settings_from_flags(flags: Flags, config: Path | None = None) -> ServiceSettings:
    """The validated settings tree: defaults < TOML ``config`` < SBD_* environment < ``flags``."""
    f = flags
    devices = [d.strip() for d in f.devices.split(",") if d.strip()] if f.devices else None
    dialect = input_dialect(config, f.dialect, f.socket_type)
    return service_settings(
        config,
        {
            "detector": detector_section(f),
            "ingest": {
                "endpoint": f.input,
                "mode": f.mode,
                "input": ingest_input(dialect, f.socket_type, f.series_timeout),
            },
            "publish": {"endpoint": f.output, "enabled": f.publish},
            "record": {"directory": f.record_dir, "enabled": f.record, "compression": f.compression},
            "denoise": {
                "engine": f.engine,
                "model": f.model,
                "device": f.device,
                "batch_frames": f.batch,
                "policy": f.policy,
                "workers": f.workers,
                "devices": devices,
                "threads_per_worker": f.threads,
                "tile": f.tile,
                "margin": f.margin,
                "orientations": f.orientations,
                "upsample": f.upsample,
                "likelihood": likelihood(f.likelihood, f.evidence_frames),
            },
            "lanes": {"live": f.live, "complete": f.complete},  # docs/service.md "Two lanes"
            "metrics": {"enabled": f.metrics, "port": f.metrics_port},
            "viewer": {"enabled": f.viewer, "port": f.viewer_port},  # docs/viewer.md
        },
    )


def detector_section(f: Flags) -> dict[str, Any]:
    """``[detector]`` from the flags over what a recording states (a flag's dose replaces the other form)."""
    if f.dose is not None and f.counts_per_px is not None:
        fail("--dose and --counts-per-px: give the dose per frame in one unit, not both")
    given = {"pixel_size_A": f.pixel_size, "dose_e_per_A2": f.dose, "counts_per_px": f.counts_per_px}
    if f.recorded is None:
        return given
    rec = dict(f.recorded)
    if f.dose is not None or f.counts_per_px is not None:  # a flag's dose, in either unit, replaces both
        rec = {k: v for k, v in rec.items() if k not in ("dose_e_per_A2", "counts_per_px")}
    elif f.pixel_size is not None and rec.get("counts_per_px") is not None:
        rec.pop("dose_e_per_A2", None)  # a new pixel size keeps the counts the frames hold
    return {**rec, **{k: v for k, v in given.items() if v is not None}}


def detector_settings(f: Flags) -> DetectorSettings:
    """The detector section alone (``emulate`` has no service settings)."""
    from pydantic import ValidationError

    from sbd_stream.config import DetectorSettings

    try:
        return DetectorSettings(**{k: v for k, v in detector_section(f).items() if v is not None})
    except ValidationError as e:
        fail(settings_error(e))


def service_settings(config: Path | None, overrides: dict[str, Any]) -> ServiceSettings:
    """``load_settings`` without the flags not given (None, empty tables); errors end the command."""
    from pydantic import ValidationError

    from sbd_stream.config import load_settings

    def prune(d: dict[str, Any]) -> dict[str, Any]:
        out = {k: prune(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}
        return {k: v for k, v in out.items() if v != {}}

    def paths(d: dict[str, Any], at: str = "") -> set[str]:
        out: set[str] = set()
        for k, v in d.items():
            out |= paths(v, f"{at}{k}.") if isinstance(v, dict) else {f"{at}{k}"}
        return out

    given = prune(overrides)
    try:
        return load_settings(config, given)
    except ValidationError as e:
        fail(settings_error(InputErrors(e), flags=INPUT_FLAGS, from_flags=paths(given)))
    except (OSError, ValueError) as e:
        fail(f"settings: {e}")


INPUT_FLAGS = {
    "ingest.input.dialect": "--dialect",
    "ingest.input.socket_type": "--socket-type",
    "ingest.input.series_timeout_s": "--series-timeout",
}
"""The ``[ingest.input]`` settings the ``serve`` flags set (named by the flag when a flag gave them)."""


class InputErrors:
    """A settings ValidationError whose ``ingest.input`` errors read as the flag / setting the user gave.

    ``ingest.input`` is a tagged union, so pydantic puts the dialect in the error's path
    (``ingest.input.wire-v1.series_timeout_s``) and refuses a DECTRIS-only setting on wire-v1 as an
    "extra input": ``--series-timeout 5`` read ``ingest.input.wire-v1.series_timeout_s: Extra inputs are
    not permitted``, naming neither the flag nor why. Here the tag leaves the path (so the flag is found),
    that refusal says which dialects the setting applies to, and an unknown ``--dialect`` lists the
    known ones. ``settings_error`` reads only ``errors()``.
    """

    def __init__(self, e: Any) -> None:
        self._errors = [_untagged(dict(err)) for err in e.errors()]

    def errors(self) -> list[dict[str, Any]]:
        return self._errors


def _untagged(err: dict[str, Any]) -> dict[str, Any]:
    from sbd_stream.config import DectrisInput, InputDialect, WireV1Input

    loc = tuple(str(x) for x in err.get("loc", ()))
    at = next((i for i in range(len(loc) - 1) if loc[i : i + 2] == ("ingest", "input")), None)
    if at is None:
        return err
    head, rest = loc[: at + 2], loc[at + 2 :]
    if not rest and err.get("type") == "union_tag_invalid":  # --dialect bogus
        ctx = err.get("ctx") or {}
        known = ", ".join(d.value for d in InputDialect)
        return {**err, "loc": (*head, "dialect"), "msg": f"should be one of {known}", "input": ctx.get("tag")}
    if not rest or rest[0] not in {d.value for d in InputDialect}:
        return err
    tag, rest = rest[0], rest[1:]
    out = {**err, "loc": (*head, *rest)}
    dectris_only = set(DectrisInput.model_fields) - set(WireV1Input.model_fields)
    if err.get("type") == "extra_forbidden" and rest and rest[0] in dectris_only:
        out["msg"] = (
            "applies to a DECTRIS input only (--dialect dectris-stream-v1 or dectris-stream-v2, TOML "
            f"[ingest.input] dialect); this input is {tag}"
        )
    return out


def ingest_input(
    dialect: str | None, socket_type: str | None, series_timeout: float | None
) -> dict[str, Any]:
    """The ``ingest.input`` table from the flags (None: keep file / env / default).

    The DECTRIS-only flags need a DECTRIS dialect, from ``--dialect`` or the settings file: the
    settings refuse them for wire format v1 rather than ignore them.
    """
    return {"dialect": dialect, "socket_type": socket_type, "series_timeout_s": series_timeout}


def input_dialect(config: Path | None, dialect: str | None, socket_type: str | None) -> str | None:
    """``--socket-type`` alone keeps the dialect of the file / environment (default wire-v1)."""
    if dialect is not None or socket_type is None:
        return dialect
    return str(service_settings(config, {}).ingest.input.dialect)


def likelihood(enabled: bool | None, evidence_frames: int | None) -> dict[str, Any]:
    """``--evidence-frames N`` (N > 0) turns the maps on unless ``--no-likelihood`` was given."""
    if evidence_frames and enabled is None:
        enabled = True
    if evidence_frames and enabled is False:
        raise typer.BadParameter("--evidence-frames scores likelihood maps: drop --no-likelihood")
    return {"enabled": enabled, "evidence_frames": evidence_frames}


def folder_named(text: str) -> Path:
    """``--record-dir DIR`` as a Path, refusing an empty or blank DIR (exit 2, naming the flag).

    Why: ``--record-dir ''`` (``--record-dir "$DIR"`` with DIR unset) became ``Path("")``, which is ``.``:
    the recordings went into the working folder without a word, while the settings file and the
    environment refuse the same empty value (``config_merge.not_blank``). ``.`` written out still means
    the working folder."""
    if not text.strip():
        raise typer.BadParameter("empty: name the folder (write . for the working folder)")
    return Path(text)


def parse_shape(text: str) -> tuple[int, int]:
    """``--shape 1024x1024`` -> (1024, 1024); each side 1 to 16384, the most wire format v1 carries (a
    0, negative or larger side was a ProtocolError traceback once the first frame was encoded)."""
    from sbd_stream.protocol import MAX_SIDE

    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        fail(f"--shape must look like 1024x1024, got {text!r}")
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        fail(f"--shape: each side must be 1 to {MAX_SIDE} pixels (wire format v1), got {text!r}")
    return h, w


@contextmanager
def endpoints_named(flags: Flags) -> Iterator[None]:
    """An endpoint or port the service cannot open (``service.build.EndpointError``) ends the command in
    one line: ``error: --output foo: not a ZeroMQ endpoint ...``, named by the flag when a flag gave the
    value, else by the setting (the TOML file or an SBD_ variable did)."""
    from sbd_stream.service.endpoint_error import EndpointError

    try:
        yield
    except EndpointError as e:
        flag_of = {
            "ingest.endpoint": ("--input", flags.input),
            "publish.endpoint": ("--output", flags.output),
            "metrics.port": ("--metrics-port", flags.metrics_port),
            "viewer.port": ("--viewer-port", flags.viewer_port),
            "record.directory": ("--record-dir", flags.record_dir),
        }

        def name(setting: str) -> str:
            flag, given = flag_of.get(setting, (setting, None))
            return flag if given is not None else setting

        reason = e.reason  # the other of two settings on one port, named as the user gave it too
        if e.clash is not None:
            reason = reason.replace(f"the same port as {e.clash}", f"the same port as {name(e.clash)}")
        shown = e.where or '""'  # an empty endpoint is still shown as given
        fail(f"{name(e.setting)} {shown}: {reason}")
