"""`sbd-stream`: denoise counted TEM frames offline or live, and inspect engines.

Thin by design: options are parsed here and handed to the modules that do the work. ``app`` holds the
typer app, ``options`` the option types and the one function that turns flags into settings, and one
module per command group registers its commands: ``files`` (denoise, info, export), ``live`` (serve,
replay, emulate), ``demo`` and ``merge``. Importing the package imports the command modules; none of them
imports the package back.
"""

from sbd_stream.cli import demo, files, live, merge
from sbd_stream.cli.app import app, main

__all__ = ["app", "demo", "files", "live", "main", "merge"]
