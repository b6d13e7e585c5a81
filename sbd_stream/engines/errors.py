"""The errors an engine artefact raises, apart from ``card`` so that every engine module can share them."""

from __future__ import annotations


class ArtefactError(RuntimeError):
    """An engine directory is missing, incomplete, or does not match its card."""


class IntegrityError(ArtefactError):
    """A file the card lists is not the file the card describes (checksum mismatch), or it reaches bytes
    no checksum covers (ONNX external data).

    Apart from ``ArtefactError`` because ``auto`` must not answer it by quietly running another backend's
    file: a tampered or damaged artefact is reported, never replaced (``engines.load_engine``)."""
