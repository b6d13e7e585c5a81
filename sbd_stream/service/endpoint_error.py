"""``EndpointError``: a socket, port or folder the settings name that cannot be used here.

A module of its own, standard library only, so the CLI can name a port in use (``cli.service_start``,
``cli.options.endpoints_named``) without importing ``service.build`` and with it the engines: a busy
port is then reported before any of that is imported (audit h34). ``service.build`` re-exports both.
"""

from __future__ import annotations

__all__ = ["EndpointError", "RecordDirError"]


class EndpointError(ValueError):
    """A socket or port the settings name cannot be opened here: which setting, which address, why.

    Why: a malformed ``--output foo``, a TOML endpoint without its ``tcp://``, a port another program
    holds each ended ``serve`` in a ~100-line ZMQError / OSError traceback; the command prints this one
    line instead (``setting`` lets it name the flag when the flag gave the value).
    """

    def __init__(self, setting: str, where: str, reason: str, clash: str | None = None) -> None:
        """``clash``: the command's own other setting on the same port (``reason`` names it as written)."""
        shown = where or '""'  # an empty endpoint is still shown as given
        super().__init__(f"{setting} {shown}: {reason}")
        self.setting, self.where, self.reason, self.clash = setting, where, reason, clash


class RecordDirError(EndpointError):
    """The record folder cannot be created or written (``record.directory``; ``sinks/writable.py``)."""
