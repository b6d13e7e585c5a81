"""A 40-character CURVE key holding a character Z85 does not have is refused, naming its file.

``security.py`` ``_z85_key``: "``key`` when it is a CURVE key (40 Z85 characters, 32 bytes), else a
CurveError naming the file: libzmq's own answer to a short key was "Invalid argument", blamed on the
socket's endpoint". Mutation audit (round 2, SC5): with the length alone checked, a key of the right
length but not Z85 (a typo, a ``~`` or ``_`` pasted in) went on to libzmq; the key-file tests only
had keys of the wrong length. Real key files (``zmq.auth`` format, made by ``generate_keypair``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq.auth

from sbd_stream.security import (
    CurveError,
    CurveSettings,
    check_curve,
    generate_keypair,
    load_keypair,
    load_public_key,
)

NOT_Z85 = ["~", "_", ",", ";", "|", "\\"]


def _with_last_char(key: bytes, ch: str) -> str:
    text = key.decode()
    assert len(text) == 40
    return text[:-1] + ch


@pytest.mark.parametrize("ch", NOT_Z85)
def test_a_public_key_of_40_characters_not_all_z85_is_refused(tmp_path: Path, ch: str) -> None:
    public, _ = generate_keypair(tmp_path, "svc")
    key, _ = zmq.auth.load_certificate(str(public))
    assert load_public_key(public) == key  # the real one is taken
    bad = tmp_path / "bad.key"
    bad.write_text(f'metadata\ncurve\n    public-key = "{_with_last_char(key, ch)}"\n')
    with pytest.raises(CurveError, match="not a CURVE key") as err:
        load_public_key(bad)
    assert str(bad) in str(err.value) and "public" in str(err.value)


def test_a_secret_key_of_40_characters_not_all_z85_is_refused(tmp_path: Path) -> None:
    _, secret = generate_keypair(tmp_path, "svc")
    public_key, secret_key = zmq.auth.load_certificate(str(secret))
    assert secret_key is not None and load_keypair(secret) == (public_key, secret_key)
    bad = tmp_path / "bad.key_secret"
    bad.write_text(
        f'metadata\ncurve\n    public-key = "{public_key.decode()}"\n'
        f'    secret-key = "{_with_last_char(secret_key, "~")}"\n'
    )
    bad.chmod(0o600)
    with pytest.raises(CurveError, match="the secret key is not a CURVE key") as err:
        load_keypair(bad)
    assert str(bad) in str(err.value)


def test_such_a_key_among_the_authorized_clients_ends_the_start_up_check(tmp_path: Path) -> None:
    _, secret = generate_keypair(tmp_path / "svc", "svc")
    clients = tmp_path / "clients"
    client, _ = generate_keypair(clients, "node")
    key, _ = zmq.auth.load_certificate(str(client))
    (clients / "typo.key").write_text(f'metadata\ncurve\n    public-key = "{_with_last_char(key, "_")}"\n')
    settings = CurveSettings(enabled=True, secret_key_file=secret, authorized_keys_dir=clients)
    with pytest.raises(CurveError, match="not a CURVE key") as err:
        check_curve(settings)
    assert str(clients / "typo.key") in str(err.value)
