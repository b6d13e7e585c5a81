"""Wiring: the batch stage, the batcher, the pipeline threads, the demo and offline jobs."""
