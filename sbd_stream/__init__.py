"""sbd-stream: real-time simulation-based denoising of counted TEM frames."""

__version__ = "0.1.0"
