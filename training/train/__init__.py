"""Stage 3, training: ``config`` (``TrainConfig``), ``presets`` (the named training presets, as data),
``augment``, ``network``, ``data``, ``loop`` (the training loop, one process or many under torchrun) and
``export`` (a run -> an engine directory; the TensorRT plan).

Reads ``training.sim``'s data sets and validates with ``training.evaluate.metrics``; imports nothing from
the GPU recipe or the CLI above it.
"""
