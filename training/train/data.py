"""Training data in memory or read per batch, and the fixed, seeded noisy validation set."""

from __future__ import annotations

import numpy as np
import torch

from training.train.config import TrainConfig


class TrainData:
    """Train images plus a fixed, seeded noisy validation set.

    Sets up to ``preload_max_gb`` are read into memory once (``mini``: 190 MB); larger ones (the paper
    grid: ~56 GB) are read image by image from the HDF5 file for every batch.
    """

    def __init__(self, cfg: TrainConfig, rank: int = 0, world: int = 1) -> None:
        from training.sim.dataset import SimulatedDataset

        self._ds: SimulatedDataset | None = None
        with SimulatedDataset(cfg.data) as ds:
            self.splits = ds.split(cfg.split)
            self.dose = float(ds.attrs.get("dose", ds.meta(0)["dose"]))
            self.pixel_size_A = float(ds.attrs.get("pixel_size_A", ds.meta(0)["pixel_size_A"]))
            self.dose_e_per_A2 = float(ds.attrs.get("dose_e_per_A2", self.dose / self.pixel_size_A**2))
            self.n_images = len(ds)
            self.train_index = self.splits["train"]
            nbytes = len(self.train_index) * ds.clean(int(self.train_index[0])).nbytes
            self.preloaded = nbytes <= cfg.preload_max_gb * 2**30
            self.train = (
                torch.from_numpy(np.stack([ds.clean(int(i)) for i in self.train_index]))
                if self.preloaded
                else None
            )
            val_idx = self.splits["val"]
            pick = val_idx[np.linspace(0, len(val_idx) - 1, min(cfg.val_images, len(val_idx))).astype(int)]
            mine = pick[rank::world]
            self.val_clean = [ds.clean(int(i)) for i in mine]
            keys = [ds.image_seed(int(i)) for i in mine]  # noise that a regenerated file repeats
            self.val_counts = [
                np.random.default_rng([cfg.val_seed, k]).poisson(np.clip(c, 0, None) * self.dose)
                for k, c in zip(keys, self.val_clean, strict=True)
            ]
            # extra doses: {factor: counts}, fixed and seeded like the nominal set
            self.val_counts_at = {
                f: [
                    np.random.default_rng([cfg.val_seed, k, round(1000 * f)]).poisson(
                        np.clip(c, 0, None) * self.dose * f
                    )
                    for k, c in zip(keys, self.val_clean, strict=True)
                ]
                for f in cfg.val_dose_factors
            }
            self.n_val_total = len(pick)
            self.attrs = {k: v for k, v in ds.attrs.items() if isinstance(v, str | int | float)}
            ids = ds.structure_ids()
            self.structures = {k: sorted({str(ids[i]) for i in v}) for k, v in self.splits.items()}
        if not self.preloaded:
            self._ds = SimulatedDataset(cfg.data)

    def close(self) -> None:
        if self._ds is not None:
            self._ds.close()

    @property
    def n_train(self) -> int:
        return len(self.train_index)

    def images(self, which: np.ndarray, device: torch.device) -> torch.Tensor:
        """(B, H, W) clean train images number ``which`` (positions within the train split)."""
        if self.train is not None:
            return self.train[torch.as_tensor(which, device=self.train.device)]
        assert self._ds is not None
        stack = np.stack([self._ds.clean(int(self.train_index[k])) for k in which])
        return torch.from_numpy(stack).to(device, non_blocking=True)
