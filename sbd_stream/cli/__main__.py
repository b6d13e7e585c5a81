"""``python -m sbd_stream.cli``: the same CLI as the ``sbd-stream`` command."""

from sbd_stream.cli import main

main()
