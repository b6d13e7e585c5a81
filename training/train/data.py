"""Training data in memory or read per batch, and the fixed, seeded noisy validation set."""

from __future__ import annotations

import numpy as np
import torch

from training.train.config import TrainConfig


class TrainData:
    """Train images plus a fixed, seeded noisy validation set.

    Sets up to ``preload_max_gb`` are read into memory once (``mini``: 190 MB); larger ones (the paper
    grid: ~56 GB) are read image by image from the HDF5 file for every batch. ``cfg.extra_data`` files add
    their own train splits (an engine that must not learn one imaging model's look as the specimen's);
    they must share ``data``'s dose and pixel, since the noise is drawn from one dose for all.
    """

    def __init__(self, cfg: TrainConfig, rank: int = 0, world: int = 1) -> None:
        from training.sim.dataset import SimulatedDataset

        self._ds: SimulatedDataset | None = None
        with SimulatedDataset(cfg.data) as ds:
            self.splits = ds.split(cfg.split)
            for name in ("train", "val"):  # nothing to learn from, or to validate on: refuse, saying why
                if len(self.splits[name]) == 0:
                    ds.split_images(name, cfg.split)
            self.dose = float(ds.attrs.get("dose", ds.meta(0)["dose"]))
            self.pixel_size_A = float(ds.attrs.get("pixel_size_A", ds.meta(0)["pixel_size_A"]))
            self.dose_e_per_A2 = float(ds.attrs.get("dose_e_per_A2", self.dose / self.pixel_size_A**2))
            self.n_images = len(ds)
            # (file number, image index) of every train image: file 0 is cfg.data
            self.train_index = self.splits["train"]
            self._sources = [(0, int(i)) for i in self.train_index]
            extra_structures: set[str] = set()
            for f, path in enumerate(cfg.extra_data, start=1):
                with SimulatedDataset(path) as extra:
                    dose = float(extra.attrs.get("dose", extra.meta(0)["dose"]))
                    px = float(extra.attrs.get("pixel_size_A", extra.meta(0)["pixel_size_A"]))
                    if abs(dose - self.dose) > 1e-6 * self.dose or abs(px - self.pixel_size_A) > 1e-9:
                        raise ValueError(
                            f"{path}: dose {dose} at {px} A/px, but {cfg.data} has {self.dose} at "
                            f"{self.pixel_size_A} A/px: extra training sets must match the main one"
                        )
                    idx = extra.split_images("train", cfg.split)
                    self._sources += [(f, int(i)) for i in idx]
                    ids = extra.structure_ids()
                    extra_structures |= {str(ids[i]) for i in idx}
            self._paths = [cfg.data, *cfg.extra_data]
            self.draw_p = _draw_probabilities(self._sources, cfg.extra_data_weights, len(cfg.extra_data))
            nbytes = len(self._sources) * ds.clean(int(self.train_index[0])).nbytes
            self.preloaded = nbytes <= cfg.preload_max_gb * 2**30
            self.train = torch.from_numpy(np.stack(self._read_all(ds))) if self.preloaded else None
            # validation: data's val split, and as many from each extra set's (so that the checkpoint
            # kept is the best on every imaging model trained on); the noise is seeded by the image
            self.val_clean, keys, val_ids = _val_pick(ds, self.splits["val"], cfg.val_images, rank, world, ())
            for f, path in enumerate(cfg.extra_data, start=1):
                with SimulatedDataset(path) as extra:
                    val = extra.split(cfg.split)["val"]
                    c, k, picked = _val_pick(extra, val, cfg.val_images, rank, world, (f,))
                    self.val_clean += c
                    keys += k
                    val_ids += picked
            self.val_counts = [
                np.random.default_rng([cfg.val_seed, *k]).poisson(np.clip(c, 0, None) * self.dose)
                for k, c in zip(keys, self.val_clean, strict=True)
            ]
            # extra doses: {factor: counts}, fixed and seeded like the nominal set
            self.val_counts_at = {
                f: [
                    np.random.default_rng([cfg.val_seed, *k, round(1000 * f)]).poisson(
                        np.clip(c, 0, None) * self.dose * f
                    )
                    for k, c in zip(keys, self.val_clean, strict=True)
                ]
                for f in cfg.val_dose_factors
            }
            self.n_val_total = len(val_ids)
            self.attrs = {k: v for k, v in ds.attrs.items() if isinstance(v, str | int | float)}
            ids = ds.structure_ids()
            self.structures = {k: sorted({str(ids[i]) for i in v}) for k, v in self.splits.items()}
            self.structures["train"] = sorted(set(self.structures["train"]) | extra_structures)
            # val: the structures of the images validated on (all ranks' shares, extra sets too), not the
            # split's list, so the run's record shows what picked its checkpoint (audit 27: a pick from
            # another split was hidden by it)
            self.structures["val"] = sorted(set(val_ids))
        self._open: list[SimulatedDataset] = []
        if not self.preloaded:
            self._open = [SimulatedDataset(p) for p in self._paths]
            self._ds = self._open[0]

    def _read_all(self, main) -> list[np.ndarray]:
        from training.sim.dataset import SimulatedDataset

        out = [main.clean(i) for f, i in self._sources if f == 0]
        for f, path in enumerate(self._paths[1:], start=1):
            with SimulatedDataset(path) as extra:
                out += [extra.clean(i) for g, i in self._sources if g == f]
        return out  # in self._sources order: file 0 first, then each extra file in turn

    def close(self) -> None:
        for ds in self._open:
            ds.close()
        self._open = []
        self._ds = None

    @property
    def n_train(self) -> int:
        return len(self._sources)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` train image positions: uniform, or by each set's weight (``extra_data_weights``)."""
        if self.draw_p is None:
            return rng.integers(self.n_train, size=n)
        return rng.choice(self.n_train, size=n, p=self.draw_p)

    def images(self, which: np.ndarray, device: torch.device) -> torch.Tensor:
        """(B, H, W) clean train images number ``which`` (positions within the train split)."""
        if self.train is not None:
            return self.train[torch.as_tensor(which, device=self.train.device)]
        assert self._open, "closed"
        stack = np.stack([self._open[self._sources[k][0]].clean(self._sources[k][1]) for k in which])
        return torch.from_numpy(stack).to(device, non_blocking=True)


def _val_pick(ds, val_idx: np.ndarray, n: int, rank: int, world: int, prefix: tuple[int, ...]):
    """``n`` evenly spaced validation images of one set (this process's share), their noise keys (the
    image's seed, which a regenerated file repeats, after ``prefix``: the file number for extra sets),
    and the structure id of every image picked, all ranks' shares (their number: the images in all)."""
    pick = val_idx[np.linspace(0, len(val_idx) - 1, min(n, len(val_idx))).astype(int)]
    mine = pick[rank::world]
    ids = ds.structure_ids()
    return (
        [ds.clean(int(i)) for i in mine],
        [(*prefix, ds.image_seed(int(i))) for i in mine],
        [str(ids[i]) for i in pick],
    )


def _draw_probabilities(
    sources: list[tuple[int, int]], weights: list[float], n_extra: int
) -> np.ndarray | None:
    """Per-image draw probabilities from per-set weights (file 0 weighs 1); None when all weigh 1, so runs
    without weights draw exactly as before."""
    if weights and len(weights) != n_extra:  # before the all-ones shortcut, which let a stray weight pass
        raise ValueError(
            f"extra_data_weights (--extra-data-weight): one per extra data set (--extra-data: {n_extra}), "
            f"got {len(weights)}: {weights}"
        )
    if not weights or all(w == 1.0 for w in weights):
        return None
    if not all(np.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"extra_data_weights: {n_extra} finite non-negative weights needed, got {weights}")
    per_file = np.array([1.0, *weights])[np.array([f for f, _ in sources])]
    return per_file / per_file.sum()
