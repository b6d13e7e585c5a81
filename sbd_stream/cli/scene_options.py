"""Options of the emulated acquisition shared by `emulate` and `demo`: which scene, drift, focus, event.

Defaults are the ``EmulatorSettings`` ones (config.py): a flag left out is not passed on, so each default
is defined once there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

Scene = Annotated[
    Path | None,
    typer.Option(
        "--scene", help="Scene bundle (.h5, `sbd-train scenes`); default: the bundled held-out specimen"
    ),
]
Drift = Annotated[float | None, typer.Option("--drift", help="Specimen drift, A/s, >= 0 (default 0.5)")]
DriftAngle = Annotated[float | None, typer.Option("--drift-angle", help="Drift direction, deg from +x (30)")]
Focus = Annotated[float | None, typer.Option("--focus", help="Defocus at the first frame, nm (7.5)")]
FocusRate = Annotated[float | None, typer.Option("--focus-rate", help="Focus change, nm/s (default 0.2)")]
EventFrame = Annotated[
    int | None,
    typer.Option("--event-frame", help="Frame (0 to --frames - 1) where a surface column vanishes / hops"),
]
Event = Annotated[str | None, typer.Option("--event", help="vanish (default) or hop")]


EMULATOR_FLAGS = {
    "shape": "--shape",
    "dtype": "--dtype",
    "dose": "--dose / --counts-per-px",
    "pixel_size_A": "--pixel-size",
    "rate_hz": "--rate",
    "n_frames": "--frames",
    "seed": "--seed",
    "acq": "--acq",
    "pool": "--pool",
    "sndhwm": "--sndhwm",
    "peers": "--peers",
    "endpoint": "--endpoint",
    "wait_subscriber_s": "--wait",
    "scene": "--scene",
    "drift_A_per_s": "--drift",
    "drift_angle_deg": "--drift-angle",
    "focus_nm": "--focus",
    "focus_rate_nm_per_s": "--focus-rate",
    "event_frame": "--event-frame",
    "event": "--event",
}
"""``EmulatorSettings`` field -> the flag that sets it, so a refused value names what the user typed."""


def bundled_scene() -> Path | None:
    """The scene bundle shipped with the package, if present."""
    from sbd_stream.sources.scene import BUNDLED_SCENES

    return BUNDLED_SCENES if BUNDLED_SCENES.is_file() else None


def scene_fields(
    scene: Path | None,
    drift: float | None,
    drift_angle: float | None,
    focus: float | None,
    focus_rate: float | None,
    event_frame: int | None,
    event: str | None,
) -> dict[str, Any]:
    """EmulatorSettings fields for the flags given (the scene: ``scene`` or the bundled one).

    ``--event`` without ``--event-frame`` is refused here, at the command line, where "given" is known:
    it was accepted and the series sent without any event. (Not in ``EmulatorSettings``: its default
    event is a value too, and the demo's emulator process rebuilds the settings from all of them.)
    """
    if event is not None and event_frame is None:
        from sbd_stream.cli.app import fail

        fail(f"--event {event}: needs the frame it happens at (--event-frame N); without it no event is sent")
    given = {
        "scene": scene or bundled_scene(),
        "drift_A_per_s": drift,
        "drift_angle_deg": drift_angle,
        "focus_nm": focus,
        "focus_rate_nm_per_s": focus_rate,
        "event_frame": event_frame,
        "event": event,
    }
    return {k: v for k, v in given.items() if v is not None}


def scene_flags_need_the_scene(synthetic: bool, source: Path | None, *values: object) -> None:
    """A scene flag with ``--synthetic`` or ``--source``: one line, exit 2, before any engine loads.

    Why: only the held scene drifts, changes focus and plays an event; with a lattice or a recording's
    frames the flags were dropped without a word (``demo --synthetic --event-frame 3`` and ``emulate
    --source REC --drift 2`` ran, exit 0, with no event and no drift), the silent non-event
    docs/emulator.md "Option checks" says is refused. ``values``: --scene, --drift, --drift-angle,
    --focus, --focus-rate, --event-frame, --event, in that order.
    """
    names = ("--scene", "--drift", "--drift-angle", "--focus", "--focus-rate", "--event-frame", "--event")
    given = [n for n, v in zip(names, values, strict=True) if v is not None]
    if given and (synthetic or source is not None):
        from sbd_stream.cli.app import fail

        plays = "--synthetic plays a fixed lattice" if synthetic else f"--source {source} plays its frames"
        fail(
            f"{given[0]}: only the held scene (the default, or --scene) plays drift, focus and events; "
            f"{plays}: drop {' '.join(given)}"
        )
