"""Optional ZeroMQ CURVE security for the input and output sockets (off by default).

Why: on loopback nothing is needed, but a facility often wants remote viewers or analysis nodes to
subscribe to the denoised stream across a shared network. CURVE gives encryption plus, with an
authenticator, a list of allowed client keys, so "who may watch this microscope" is a set of files.

Conventions (ZeroMQ's, from ``zmq.auth``): key pairs are ``NAME.key_secret`` (public + secret, keep
private) and ``NAME.key`` (public only, hand it out). The side that binds is the CURVE *server*, the
side that connects is the *client*; a client must know the server's public key. A server with an
``authorized_keys_dir`` only accepts clients whose ``*.key`` file is in that directory (and itself, so
the in-process viewer can subscribe with the service's own pair); without one it accepts any client
that knows the server key (encrypted, but not access-controlled).

This module is a leaf (pydantic + pyzmq only) so config.py may import ``CurveSettings``.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import os
import stat
import threading
import unicodedata
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
import zmq.utils.z85
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)


def plain_path(value: Any) -> Any:
    """A path setting as given, unless it holds a NUL or another control character (ValueError).

    Why: ``record.directory = "rec/a\\u0000b"`` is valid TOML and passed validation, then raised
    "embedded null byte" deep in the recorder (a traceback); a newline or escape sequence in a path
    would also forge or garble the log lines that name it. Used by every path setting (``config.py``).
    """
    text = value if isinstance(value, str) else str(value) if isinstance(value, Path) else None
    if text is not None and any(unicodedata.category(ch) == "Cc" for ch in text):
        raise ValueError("a path may not hold control characters such as NUL or newline")
    return value


class CurveRole(enum.StrEnum):
    auto = "auto"  # server when the socket binds, client when it connects
    server = "server"
    client = "client"


class CurveSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="encrypt and authenticate this socket with CURVE")
    role: CurveRole = CurveRole.auto
    secret_key_file: Path | None = Field(None, description="this side's NAME.key_secret (zmq.auth format)")
    server_public_key_file: Path | None = Field(None, description="client role: the server's NAME.key")
    authorized_keys_dir: Path | None = Field(
        None, description="server role: accept only clients whose NAME.key is here (None: any client)"
    )

    @field_validator("secret_key_file", "server_public_key_file", "authorized_keys_dir", mode="before")
    @classmethod
    def _key_path(cls, value: Any) -> Any:
        """No control characters, and not empty (``""`` became ``.``: "cannot read key pair .")."""
        if isinstance(value, str) and not value.strip():
            raise ValueError("an empty path: name the key file (or folder)")
        return plain_path(value)

    @model_validator(mode="after")
    def _check(self) -> CurveSettings:
        if self.enabled and self.secret_key_file is None:
            raise ValueError("curve.enabled needs curve.secret_key_file")
        return self


class CurveError(RuntimeError):
    """Keys missing or unusable; raised at start-up, never while streaming."""


def curve_available() -> bool:
    return bool(zmq.has("curve"))


def generate_keypair(directory: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Create ``name.key`` and ``name.key_secret`` in ``directory`` (0600 on the secret, 0644 on the public).

    An existing pair is kept (FileExistsError) unless ``force``: a new pair invalidates every copy of
    the old public key already handed out (clients' ``server_public_key_file``, servers'
    ``authorized_keys_dir``), and those connections then fail only at their next handshake.
    The files are created under umask 077: written first and chmod-ed after, the secret was readable
    by everyone in between.
    """
    existing = [p for p in (directory / f"{name}.key", directory / f"{name}.key_secret") if p.exists()]
    if existing and not force:
        raise FileExistsError(", ".join(str(p) for p in existing))
    directory.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(str(directory), name)
    finally:
        os.umask(old)
    Path(secret).chmod(0o600)  # an existing file (--force) keeps its mode through the rewrite
    Path(public).chmod(0o644)  # the public half is meant to be handed out
    return Path(public), Path(secret)


_warned_readable: set[str] = set()


def _check_secret_mode(path: Path) -> None:
    """Refuse a secret key file others may write (they could put their own key in: as ssh does), and
    warn once about one they may read (they could pose as this service)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise CurveError(f"cannot read key pair {path}: {exc}") from exc
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise CurveError(
            f"{path} is writable by group or others (mode {mode:04o}): someone else could replace this "
            f"secret key; chmod 600 {path}"
        )
    if mode & 0o044 and str(path) not in _warned_readable:
        _warned_readable.add(str(path))
        log.warning(
            "%s is readable by group or others (mode %04o): whoever reads it can pose as this side; "
            "chmod 600 %s",
            path, mode, path,
        )  # fmt: skip


def _z85_key(key: bytes, path: Path, what: str) -> bytes:
    """``key`` when it is a CURVE key (40 Z85 characters, 32 bytes), else a CurveError naming the file:
    libzmq's own answer to a short key was "Invalid argument", blamed on the socket's endpoint."""
    try:
        ok = len(key) == 40 and len(zmq.utils.z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError, IndexError):
        ok = False
    if not ok:
        raise CurveError(f"{path}: the {what} key is not a CURVE key (40 Z85 characters)")
    return key


def load_keypair(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a ``.key_secret`` file, which only its owner may write."""
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise CurveError(f"cannot read key pair {path}: {exc}") from exc
    if not public or not secret:
        raise CurveError(f"{path} holds no secret key (use the NAME.key_secret file)")
    _check_secret_mode(Path(path))
    return _z85_key(public, path, "public"), _z85_key(secret, path, "secret")


def load_public_key(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise CurveError(f"cannot read public key {path}: {exc}") from exc
    if not public:
        raise CurveError(f"{path} holds no public key")
    return _z85_key(public, path, "public")


def check_curve(curve: CurveSettings) -> None:
    """Read every key file ``curve`` names (its pair, the server's key, each authorized client key),
    so that a missing, malformed or unprotected one ends the start-up in one line (CurveError) and not
    later, when a socket is being set up."""
    if not curve.enabled:
        return
    if curve.secret_key_file is not None:
        load_keypair(curve.secret_key_file)
    if curve.server_public_key_file is not None:
        load_public_key(curve.server_public_key_file)
    if curve.authorized_keys_dir is not None:
        _authorized_keys(curve.authorized_keys_dir)


class _KeyPolicy:
    """ZAP credentials callback for one domain: any client, or only the listed public keys."""

    def __init__(self, allowed: set[bytes] | None) -> None:
        self.allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        return self.allowed is None or key in self.allowed


_auth_lock = threading.Lock()
_authenticators: dict[int, ThreadAuthenticator] = {}


def authenticator(ctx: zmq.Context) -> ThreadAuthenticator:
    """The one ZAP handler of ``ctx`` (libzmq allows one per context), started on first use."""
    with _auth_lock:
        auth = _authenticators.get(id(ctx))
        if auth is None or auth.thread is None or not auth.thread.is_alive():
            auth = ThreadAuthenticator(ctx)
            auth.start()
            _authenticators[id(ctx)] = auth
        return auth


def stop_authenticator(ctx: zmq.Context) -> None:
    with _auth_lock:
        auth = _authenticators.pop(id(ctx), None)
    if auth is not None:
        auth.stop()


def _authorized_keys(directory: Path) -> set[bytes]:
    if not directory.is_dir():
        raise CurveError(f"authorized_keys_dir {directory} is not a folder holding NAME.key files")
    keys = {load_public_key(p) for p in sorted(directory.glob("*.key"))}
    if not keys:
        raise CurveError(f"authorized_keys_dir {directory} holds no *.key files: nobody could connect")
    return keys


def apply_curve(sock: zmq.Socket, settings: CurveSettings, binds: bool, domain: str) -> CurveRole | None:
    """Configure CURVE on ``sock`` BEFORE it binds or connects; returns the role used (None: off).

    ``domain`` names the ZAP domain of a server socket, so the input and the output of one service
    can have different allowed-client lists behind the single authenticator of their context.
    """
    if not settings.enabled:
        return None
    if not curve_available():
        raise CurveError("this libzmq was built without CURVE support")
    assert settings.secret_key_file is not None
    public, secret = load_keypair(settings.secret_key_file)
    role = settings.role
    if role is CurveRole.auto:
        role = CurveRole.server if binds else CurveRole.client
    try:
        sock.curve_publickey = public
        sock.curve_secretkey = secret
    except zmq.ZMQError as exc:  # keys are checked on loading; this names the file if libzmq still refuses
        raise CurveError(f"{settings.secret_key_file}: libzmq refused the key pair ({exc})") from exc
    if role is CurveRole.server:
        keys_dir = settings.authorized_keys_dir
        # our own key is always allowed: the in-process viewer subscribes with the service's key pair
        allowed = None if keys_dir is None else _authorized_keys(keys_dir) | {public}
        auth = authenticator(sock.context)
        auth.configure_curve_callback(domain=domain, credentials_provider=_KeyPolicy(allowed))
        sock.zap_domain = domain.encode()
        sock.curve_server = True
    else:
        if settings.server_public_key_file is None:
            raise CurveError("a CURVE client needs server_public_key_file (the server's NAME.key)")
        sock.curve_serverkey = load_public_key(settings.server_public_key_file)
    return role


def is_loopback(where: str) -> bool:
    """True for an endpoint or host reachable from this machine only (127.0.0.0/8, ::1, ipc, inproc).

    A wildcard (``*``, ``0.0.0.0``, ``::``, empty), an interface name or a host name is not.
    """
    host = where.strip()
    if "://" in host:
        scheme, host = host.split("://", 1)
        if scheme in ("ipc", "inproc"):
            return True
        if ";" in host:  # tcp://source;destination: what we bind is the part after ';'
            host = host.split(";", 1)[1]
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(what: str, where: str) -> bool:
    """Log a warning when ``what`` binds beyond loopback; True if it does.

    Defaults only bind 127.0.0.1: a socket or port open to the facility network must be a choice
    someone made on purpose, and the log is where an operator sees that it was made.
    """
    if is_loopback(where):
        return False
    log.warning(
        "%s binds %s, which is reachable from other machines (not loopback)%s",
        what,
        where if where.strip() else '"" (every interface)',
        "" if what.startswith(("metrics", "viewer")) else "; consider CURVE (docs/deployment.md)",
    )
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m sbd_stream.security keygen DIR NAME [--force]``: write NAME.key and NAME.key_secret
    in DIR; an existing pair of that name is kept (exit 1) unless --force replaces it."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m sbd_stream.security", description=main.__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keygen", help="create a CURVE key pair (zmq.auth format)")
    k.add_argument("directory", type=Path)
    k.add_argument("name")
    k.add_argument(
        "--force",
        action="store_true",
        help="replace an existing NAME.key / NAME.key_secret (copies of the old public key stop working)",
    )
    args = p.parse_args(argv)
    try:
        public, secret = generate_keypair(args.directory, args.name, force=args.force)
    except FileExistsError as exc:
        print(
            f"error: {exc} exists; a new pair would lock out every client holding the old public key "
            "(--force to replace it)",
            file=sys.stderr,
        )
        return 1
    print(f"public key (hand out): {public}\nsecret key (keep private, mode 0600): {secret}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
