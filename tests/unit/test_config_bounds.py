"""Every integer setting has an upper bound, and numbers refuse true / false (fuzz audit, defect 3).

``SBD_INGEST__RCVHWM=2147483648``, ``SBD_PUBLISH__SNDHWM=1e23`` (as digits) and
``SBD_INGEST__MAX_PAYLOAD_BYTES=2**63-1`` (MAXMSGSIZE = 2 x that + 1 MiB) passed validation, printed the
``serving:`` banner, then died in ZeroMQ with ``OverflowError`` and exit 1; ``ingest.queue_frames = 1e23``
was accepted. TOML ``stop_timeout_s = true`` read as 1.0, where the environment's ``true`` was refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import zmq
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.cli.app import settings_error
from sbd_stream.cli.options import InputErrors
from sbd_stream.config import IngestSettings, ServiceSettings, SocketMode, load_settings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import MAX_SIDE
from sbd_stream.sinks.xpub import xpub_socket
from sbd_stream.sources.receiver import open_receiver

C_INT_MAX = 2**31 - 1


def _kinds(annotation: Any) -> set[Any]:
    return {x for t in (annotation, *get_args(annotation)) for x in (t, *get_args(t))}


def _integer_settings(model: type[BaseModel], at: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Dotted paths of every integer setting of the tree (DECTRIS input settings included)."""
    out = []
    for name, f in model.model_fields.items():
        kinds = _kinds(f.annotation)
        tables = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        for table in tables:
            out += _integer_settings(table, (*at, name))
        if not tables and int in kinds and bool not in kinds:
            out.append((*at, name))
    return out


def _nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    d: dict[str, Any] = {path[-1]: value}
    if path[:2] == ("ingest", "input"):
        d["dialect"] = "dectris-stream-v1"
    for key in reversed(path[:-1]):
        d = {key: d}
    return d


INTEGERS = _integer_settings(ServiceSettings)


def test_the_tree_walk_finds_the_integer_settings() -> None:
    assert {("ingest", "rcvhwm"), ("publish", "sndhwm"), ("ingest", "max_payload_bytes")} <= set(INTEGERS)
    assert ("denoise", "likelihood", "evidence_frames") in INTEGERS and len(INTEGERS) >= 20


@pytest.mark.parametrize("path", INTEGERS, ids=".".join)
def test_every_integer_setting_refuses_a_number_past_any_c_integer(path: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as e:
        load_settings(None, _nested(path, 10**23))
    assert tuple(str(x) for x in e.value.errors()[0]["loc"] if x != "dectris-stream-v1") == path


@pytest.mark.parametrize(
    ("env", "value", "limit"),
    [
        ("SBD_INGEST__RCVHWM", C_INT_MAX, C_INT_MAX),
        ("SBD_PUBLISH__SNDHWM", C_INT_MAX, C_INT_MAX),
        ("SBD_INGEST__MAX_PAYLOAD_BYTES", MAX_SIDE * MAX_SIDE * 4, MAX_SIDE * MAX_SIDE * 4),
        ("SBD_INGEST__QUEUE_FRAMES", 100_000, 100_000),
    ],
)
def test_socket_and_queue_settings_at_their_bound_and_one_past(
    env: str, value: int, limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(env, str(value))
    load_settings(None, {})
    monkeypatch.setenv(env, str(value + 1))
    with pytest.raises(ValidationError, match=f"less than or equal to {limit}"):
        load_settings(None, {})


def test_the_largest_accepted_values_open_real_sockets() -> None:
    """The bounds are what ZeroMQ takes: RCVHWM, MAXMSGSIZE (2 x the payload + 1 MiB) and SNDHWM."""
    ing = IngestSettings(
        endpoint="tcp://127.0.0.1:*",
        mode=SocketMode.bind,
        rcvhwm=C_INT_MAX,
        max_payload_bytes=MAX_SIDE**2 * 4,
    )
    ctx = zmq.Context()
    try:
        rec = open_receiver(ing, Metrics(), lambda _f: None, context=ctx)
        assert rec.sock.getsockopt(zmq.RCVHWM) == C_INT_MAX
        assert rec.sock.getsockopt(zmq.MAXMSGSIZE) == 2 * MAX_SIDE**2 * 4 + (1 << 20)
        rec.close()
        pub = xpub_socket(ctx, load_settings(None, {"publish": {"sndhwm": C_INT_MAX}}).publish.sndhwm)
        assert pub.getsockopt(zmq.SNDHWM) == C_INT_MAX
        pub.close(linger=0)
    finally:
        ctx.term()


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SBD_INGEST__RCVHWM": "2147483648"}, "ingest.rcvhwm"),
        ({"SBD_PUBLISH__SNDHWM": "99999999999999999999999"}, "publish.sndhwm"),
        ({"SBD_INGEST__MAX_PAYLOAD_BYTES": "9223372036854775807"}, "ingest.max_payload_bytes"),
    ],
)
@pytest.mark.timeout(60)  # the old code crashed after its banner; a serve that starts would run on
def test_serve_refuses_an_overflowing_socket_setting_before_its_banner(
    env: dict[str, str], name: str
) -> None:
    res = CliRunner().invoke(app, ["serve", "--no-record", "--metrics-port", "0"], env=env)
    out = res.output.strip()
    assert res.exit_code == 2 and "Traceback" not in out and "serving" not in out, out
    assert out.startswith(f"error: {name}: Input should be less than or equal to") and "\n" not in out, out


@pytest.mark.timeout(60)
def test_serve_refuses_them_from_a_settings_file_too(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text("[ingest]\nrcvhwm = 99999999999999999999999\nqueue_frames = 1e23\n")
    res = CliRunner().invoke(app, ["serve", "--config", str(toml), "--no-record", "--metrics-port", "0"])
    out = res.output.strip()
    assert res.exit_code == 2 and "serving" not in out and "\n" not in out, out
    assert "ingest.rcvhwm: Input should be less than or equal to 2147483647" in out, out
    assert "ingest.queue_frames" in out, out


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("stop_timeout_s = true\n", "stop_timeout_s"),
        ("[ingest]\nrcvhwm = false\n", "ingest.rcvhwm"),
        ("[denoise]\norientations = true\n", "denoise.orientations"),
        ("[denoise]\nthreads_per_worker = true\n", "denoise.threads_per_worker"),
        ("[denoise.likelihood]\nthreshold = true\n", "denoise.likelihood.threshold"),
        ("[detector]\npixel_size_A = true\n", "detector.pixel_size_A"),
        ('[ingest.input]\ndialect = "dectris-stream-v1"\nheartbeat_s = true\n', "ingest.input.heartbeat_s"),
    ],
)
def test_a_number_setting_refuses_true_or_false_in_toml_as_in_the_environment(
    tmp_path: Path, text: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text(text)
    with pytest.raises(ValidationError) as e:
        load_settings(toml, {})
    line = settings_error(InputErrors(e.value), from_flags=set())
    assert line.startswith(f"{name}: Input should be") and "(got '" in line and "\n" not in line, line
    value = text.rsplit("= ", 1)[1].strip()  # the same word from the environment: the same refusal
    monkeypatch.setenv("SBD_" + name.upper().replace(".", "__"), value)
    with pytest.raises(ValidationError) as env:
        load_settings(
            None, {"ingest": {"input": {"dialect": "dectris-stream-v1"}}} if "input" in name else {}
        )
    assert settings_error(InputErrors(env.value), from_flags=set()) == line


def test_true_or_false_still_set_the_switches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text(
        "[record]\nenabled = false\n[lanes]\nlive = false\n[denoise.likelihood]\nenabled = true\n"
    )
    monkeypatch.setenv("SBD_PUBLISH__ENABLED", "false")
    s = load_settings(toml, {})
    assert not (s.record.enabled or s.lanes.live or s.publish.enabled) and s.denoise.likelihood.enabled
    assert s.ingest.rcvhwm == 64 and s.stop_timeout_s == 10.0


@pytest.mark.timeout(60)
def test_emulate_refuses_a_send_high_water_mark_past_a_c_int() -> None:
    res = CliRunner().invoke(app, ["emulate", "--sndhwm", "2147483648", "--frames", "2"])
    out = res.output.strip()
    assert res.exit_code == 2 and "Traceback" not in out and "\n" not in out, out
    assert out == "error: --sndhwm: Input should be less than or equal to 2147483647 (got 2147483648)", out


def test_the_detector_pixel_size_has_the_bounds_a_file_may_state() -> None:
    """``--pixel-size 1e-6`` passed the settings (> 0 only) and made ``denoise`` ask for 460 GB; a file
    stating it was refused (formats/limits.py). One range for both."""
    from sbd_stream.config import DetectorSettings
    from sbd_stream.formats.limits import PIXEL_SIZE_A_RANGE

    lo, hi = PIXEL_SIZE_A_RANGE
    assert DetectorSettings(pixel_size_A=lo).pixel_size_A == lo
    assert DetectorSettings(pixel_size_A=hi).pixel_size_A == hi
    for bad in (lo / 2, hi * 2, 1e-6):
        with pytest.raises(ValidationError, match="pixel_size_A"):
            DetectorSettings(pixel_size_A=bad)
