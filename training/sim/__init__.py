"""Stage 1, simulation: atomic models (``structures``), abTEM imaging (``imaging``), worlds and their
seeded plans (``worlds``), Dask orchestration (``simulate``), the HDF5 data contract (``dataset``),
structure splits (``splits``) and what is made from a simulated set (samples, sheets, reports).

Imports nothing from the other stages of ``training``.
"""
