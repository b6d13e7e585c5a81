"""Simulated training set on disk: one HDF5 file, appendable and resumable (see docs/dataset-format.md).

The simulator produces images in *tasks* (one multislice run per structure/tilt, several thicknesses and
defocus values each). A task is the unit of resumption: its images are appended together and the task
key is recorded last, followed by a flush. A run killed while computing loses only the task in flight;
a run killed while writing leaves rows beyond the committed counters, which the next writer truncates.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT_NAME = "sbd-stream-simulated"
FORMAT_VERSION = 1

STR_LEN = 64
META_FIELDS: dict[str, np.dtype] = {
    "structure_id": np.dtype(f"S{STR_LEN}"),
    "task_key": np.dtype(f"S{STR_LEN}"),
    "particle_class": np.dtype("S8"),
    "defect_class": np.dtype("S8"),
    "contrast_class": np.dtype("i1"),
    "thickness_nm": np.dtype("f4"),
    "tilt_x_deg": np.dtype("f4"),
    "tilt_y_deg": np.dtype("f4"),
    "defocus_nm": np.dtype("f4"),
    "pixel_size_A": np.dtype("f4"),
    "dose": np.dtype("f4"),
    "col_start": np.dtype("i8"),
    "col_count": np.dtype("i4"),
}
"""Per-image metadata columns. Strings are ASCII bytes, decoded by the reader."""

OPTICS_META_FIELDS: dict[str, np.dtype] = {"focal_spread_nm": np.dtype("f4"), "vibration_pm": np.dtype("f4")}
"""Per-image optics, written by worlds that draw them per image (``Optics.*_range``); files made before
they existed lack them, and readers then report the world's fixed values from the file's config."""

COLUMN_FIELDS: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "xy": (np.dtype("f4"), (2,)),
    "is_surface": (np.dtype("bool"), ()),
    "contrast": (np.dtype("i1"), ()),
    "species": (np.dtype("u1"), ()),
    "n_atoms": (np.dtype("i2"), ()),
}
"""Per-column ground truth, stored flat; each image owns rows [col_start, col_start + col_count)."""

CONTRAST_NAMES = ("black", "intermediate", "white")

REQUIRED_PATHS = (
    "images",
    "committed",
    *(f"meta/{name}" for name in META_FIELDS),
    *(f"columns/{name}" for name in COLUMN_FIELDS),
    "tasks/key",
    "tasks/structure_json",
)
"""What the reader needs. The bundled sample (``sbd-train demo-samples``) has the format's name but only
images and five meta fields; it used to end in h5py's ``object 'task_key' doesn't exist``."""


def _summarise(paths: list[str]) -> str:
    """'columns/ (all of it), meta/task_key, ...': a group missing whole is named once."""
    out: list[str] = []
    groups: dict[str, Sized] = {
        "meta/": META_FIELDS,
        "columns/": COLUMN_FIELDS,
        "tasks/": ("key", "structure_json"),
    }
    for prefix, names in groups.items():
        gone = [p for p in paths if p.startswith(prefix)]
        if len(gone) == len(names):
            out.append(f"{prefix} (all of it)")
        else:
            out += gone
    return ", ".join([p for p in paths if "/" not in p] + out)


class EmptySplit(ValueError):
    """A data set whose split a command needs holds no images (or too few structures to split)."""


@dataclass
class ImageRecord:
    """One clean image with its metadata and column ground truth, as handed to the writer."""

    clean: np.ndarray
    meta: dict[str, Any]
    columns: dict[str, np.ndarray]


@dataclass
class TaskResult:
    """All images of one simulation task plus the structure description they came from."""

    key: str
    structure: dict[str, Any]
    images: list[ImageRecord] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict[str, list[ImageRecord]] = field(default_factory=dict)
    """Images of other views (``"test_view"``: the test split at the detector's sampling), own file."""


class SimulatedDatasetWriter:
    """Appends tasks to an HDF5 file; reopening an existing file resumes where the last flush left it."""

    def __init__(self, path: str | Path, image_shape: tuple[int, int], attrs: dict[str, Any] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        exists = self.path.exists()
        self._f = h5py.File(self.path, "a")
        if not exists or "images" not in self._f:
            self._create(tuple(image_shape), attrs or {})
        else:
            self._check_compatible(tuple(image_shape), attrs or {})
            self._truncate_to_committed()

    # -- layout -------------------------------------------------------------------------------------------
    def _create(self, shape: tuple[int, ...], attrs: dict[str, Any]) -> None:
        f = self._f
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["image_shape"] = np.asarray(shape, dtype=np.int64)
        f.attrs["config_json"] = json.dumps(attrs, sort_keys=True, default=str)
        for key, value in attrs.items():
            if isinstance(value, str | int | float | bool):
                f.attrs[key] = value
        f.create_dataset(
            "images",
            shape=(0, *shape),
            maxshape=(None, *shape),
            dtype="f4",
            chunks=(1, *shape),
            compression="lzf",
        )
        meta = f.create_group("meta")
        for name, dt in (META_FIELDS | OPTICS_META_FIELDS).items():
            meta.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(1024,))
        cols = f.create_group("columns")
        for name, (dt, tail) in COLUMN_FIELDS.items():
            cols.create_dataset(
                name,
                shape=(0, *tail),
                maxshape=(None, *tail),
                dtype=dt,
                chunks=(4096, *tail),
                compression="lzf",
            )
        str_dt = h5py.string_dtype("utf-8")
        tasks = f.create_group("tasks")
        tasks.create_dataset("key", shape=(0,), maxshape=(None,), dtype=str_dt, chunks=(256,))
        tasks.create_dataset("structure_json", shape=(0,), maxshape=(None,), dtype=str_dt, chunks=(256,))
        tasks.create_dataset("seconds", shape=(0,), maxshape=(None,), dtype="f8", chunks=(256,))
        f.create_dataset("committed", data=np.zeros(3, dtype=np.int64))  # images, columns, tasks
        f.flush()

    def _check_compatible(self, shape: tuple[int, ...], attrs: dict[str, Any]) -> None:
        if self._f.attrs.get("format") != FORMAT_NAME:
            raise ValueError(f"{self.path} is not a {FORMAT_NAME} file")
        have = tuple(int(v) for v in self._f.attrs["image_shape"])
        if have != shape:
            raise ValueError(f"{self.path} holds {have} images, cannot append {shape}")
        old = _normalised(json.loads(self._f.attrs.get("config_json", "{}")))
        new = _normalised(json.loads(json.dumps(attrs, sort_keys=True, default=str)))
        if attrs and old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ValueError(f"{self.path} was made with other settings ({', '.join(diff)}); use a new file")

    def _truncate_to_committed(self) -> None:
        """Drop rows written after the last commit (a run killed mid-write)."""
        n_img, n_col, n_task = (int(v) for v in self._f["committed"][()])
        self._f["images"].resize(n_img, axis=0)
        for name in META_FIELDS | OPTICS_META_FIELDS:
            if name in self._f["meta"]:
                self._f["meta"][name].resize(n_img, axis=0)
        for name in COLUMN_FIELDS:
            self._f["columns"][name].resize(n_col, axis=0)
        for name in ("key", "structure_json", "seconds"):
            self._f["tasks"][name].resize(n_task, axis=0)

    # -- API ----------------------------------------------------------------------------------------------
    def done_keys(self) -> set[str]:
        raw = self._f["tasks/key"][()]
        return {k.decode() if isinstance(k, bytes) else str(k) for k in raw}

    def __len__(self) -> int:
        return int(self._f["committed"][0])

    def append_task(self, task: TaskResult) -> None:
        """Append all images of a task, then commit it; the commit is what a rerun trusts."""
        f = self._f
        n_img, n_col, n_task = (int(v) for v in f["committed"][()])
        k = len(task.images)
        counts = [len(r.columns["xy"]) for r in task.images]
        total_cols = int(sum(counts))
        if k:
            imgs = np.stack([np.asarray(r.clean, dtype=np.float32) for r in task.images])
            if imgs.shape[1:] != f["images"].shape[1:]:
                raise ValueError(f"image shape {imgs.shape[1:]} != file {f['images'].shape[1:]}")
            f["images"].resize(n_img + k, axis=0)
            f["images"][n_img:] = imgs
            starts = n_col + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            vals: np.ndarray | list[Any]
            for name, dt in META_FIELDS.items():
                if name == "col_start":
                    vals = starts
                elif name == "col_count":
                    vals = np.asarray(counts)
                else:
                    vals = [_encode(r.meta[name], dt) for r in task.images]
                f["meta"][name].resize(n_img + k, axis=0)
                f["meta"][name][n_img:] = np.asarray(vals, dtype=dt)
            for name, dt in OPTICS_META_FIELDS.items():
                if name in f["meta"]:  # a file begun before these existed keeps its layout
                    vals = [r.meta.get(name, np.nan) for r in task.images]
                    f["meta"][name].resize(n_img + k, axis=0)
                    f["meta"][name][n_img:] = np.asarray(vals, dtype=dt)
            for name, (dt, tail) in COLUMN_FIELDS.items():
                vals = np.concatenate(
                    [np.asarray(r.columns[name], dtype=dt).reshape(-1, *tail) for r in task.images]
                )
                f["columns"][name].resize(n_col + total_cols, axis=0)
                f["columns"][name][n_col:] = vals
        for name, val in (
            ("key", task.key),
            ("structure_json", json.dumps(task.structure, sort_keys=True, default=_json_default)),
            ("seconds", task.seconds),
        ):
            f["tasks"][name].resize(n_task + 1, axis=0)
            f["tasks"][name][n_task] = val
        f["committed"][...] = np.array([n_img + k, n_col + total_cols, n_task + 1], dtype=np.int64)
        f.flush()

    def close(self) -> None:
        if self._f.id.valid:
            self._f.flush()
            self._f.close()

    def __enter__(self) -> SimulatedDatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _encode(value: Any, dt: np.dtype) -> Any:
    if dt.kind == "S":
        raw = str(value).encode("ascii")
        if len(raw) > dt.itemsize:
            raise ValueError(f"{value!r} longer than {dt.itemsize} bytes")
        return raw
    return value


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


class SimulatedDataset:
    """Read-only view of a simulated set; only rows counted in `committed` are visible."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f = h5py.File(self.path, "r")
        if self._f.attrs.get("format") != FORMAT_NAME:
            self._f.close()
            raise ValueError(f"{self.path} is not a {FORMAT_NAME} file")
        missing = [name for name in REQUIRED_PATHS if name not in self._f]
        if missing:
            kind = "a demo-samples bundle" if "source" in self._f.attrs else "an incomplete set"
            self._f.close()
            raise ValueError(
                f"{self.path} is {kind}, not a full {FORMAT_NAME} set: it lacks {_summarise(missing)}. "
                "Read its images and meta/ with h5py (docs/dataset-format.md, 'The bundled sample'), "
                "or open a set written by `sbd-train simulate`"
            )
        n_img, _n_col, n_task = (int(v) for v in self._f["committed"][()])
        self._n = n_img
        self._n_tasks = n_task
        self._meta = {name: self._f["meta"][name][:n_img] for name in META_FIELDS}
        for name in OPTICS_META_FIELDS:
            if name in self._f["meta"]:
                self._meta[name] = self._f["meta"][name][:n_img]
        self._cols = self._f["columns"]

    @property
    def attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self._f.attrs.items():
            out[key] = value.tolist() if isinstance(value, np.ndarray) else value
        out["config"] = json.loads(out.pop("config_json", "{}"))
        return out

    def __len__(self) -> int:
        return self._n

    def _check(self, i: int) -> int:
        if not -self._n <= i < self._n:
            raise IndexError(f"image {i} out of range for {self._n} images")
        return i % self._n

    def clean(self, i: int) -> np.ndarray:
        return np.asarray(self._f["images"][self._check(i)], dtype=np.float32)

    def columns(self, i: int) -> dict[str, np.ndarray]:
        i = self._check(i)
        a = int(self._meta["col_start"][i])
        b = a + int(self._meta["col_count"][i])
        return {name: self._cols[name][a:b] for name in COLUMN_FIELDS}

    def meta(self, i: int) -> dict[str, Any]:
        i = self._check(i)
        out: dict[str, Any] = {}
        for name, values in self._meta.items():
            v = values[i]
            if name in OPTICS_META_FIELDS and not np.isfinite(v):
                continue  # not recorded for this image (written without per-image optics)
            out[name] = v.decode() if isinstance(v, bytes) else v.item()
        return out

    def meta_table(self) -> dict[str, np.ndarray]:
        """All metadata as column arrays (strings decoded), for filtering and splits."""
        return {
            name: (np.char.decode(v, "ascii") if v.dtype.kind == "S" else v.copy())
            for name, v in self._meta.items()
        }

    def structure_ids(self) -> np.ndarray:
        return np.char.decode(self._meta["structure_id"], "ascii")

    def planned_structure_ids(self) -> list[str] | None:
        """Every structure id the file's simulation preset plans (None for files without a preset), so
        splits of a file still being simulated match those of the finished one."""
        raw = self._f.attrs.get("preset_json")
        if raw is None:
            return None
        from training.sim.worlds import World, plan

        return sorted({t.structure.structure_id for t in plan(World.model_validate_json(raw))})

    def split(self, spec: Any = None) -> dict[str, np.ndarray]:
        """Image indices per split, drawn over the planned structures (``training.sim.splits``), each in
        :meth:`canonical` order so evenly spaced subsets pick the same images in every copy of the file."""
        from training.sim.splits import SplitSpec, split_indices

        try:
            parts = split_indices(self.structure_ids(), spec or SplitSpec(), self.planned_structure_ids())
        except ValueError as e:  # too few structures: say which file
            raise EmptySplit(f"{self.path}: {e}{self._advice()}") from e
        return {name: self.canonical(idx) for name, idx in parts.items()}

    def split_images(self, name: str, spec: Any = None) -> np.ndarray:
        """Image indices of split ``name``, refusing an empty one (EmptySplit, naming file, split and why).

        Why: an empty validation split validates on nothing (val PSNR 0, a best checkpoint picked on no
        images) and an empty train split fails deep in the loop; a file still being simulated (or cut
        short) is the usual cause, and finishing the simulation the usual cure."""
        idx = self.split(spec)[name]
        if len(idx) == 0:
            if self.attrs.get("split") not in (None, name):
                why = f" (it holds the {self.attrs['split']} split only, view {self.attrs.get('view')!r})"
            else:
                why = self._advice()
            raise EmptySplit(f"{self.path}: its {name} split holds no images ({self._n} in all){why}")
        return idx

    def _advice(self) -> str:
        planned = self.planned_structure_ids()
        have = set(self.structure_ids().tolist())
        if planned and len(have) < len(planned):
            preset = self.attrs.get("preset", "<its preset>")
            return (
                f"; a partial simulation ({len(have)} of {len(planned)} planned structures): rerun "
                f"`sbd-train simulate --preset {preset} --out {self.path}` to finish it"
            )
        return ""

    def image_key(self, i: int) -> str:
        """A name for image ``i`` that survives regeneration: task key, thickness, defocus.

        Parallel workers append tasks as they finish, so a file index names a different image in every
        run of the simulation; evaluation subsets and noise seeds key on this instead."""
        i = self._check(i)
        m = self._meta
        task = m["task_key"][i].decode()
        return f"{task}|{float(m['thickness_nm'][i]):.3f}|{float(m['defocus_nm'][i]):.3f}"

    def image_seed(self, i: int) -> int:
        """A 32-bit integer from :meth:`image_key`, for per-image noise that a regenerated file repeats."""
        return zlib.crc32(self.image_key(i).encode())

    def canonical(self, idx: np.ndarray | None = None) -> np.ndarray:
        """``idx`` (default: every image) sorted by task key, then thickness, then defocus."""
        idx = np.arange(self._n) if idx is None else np.asarray(idx, dtype=np.int64)
        m = self._meta
        order = np.lexsort((m["defocus_nm"][idx], m["thickness_nm"][idx], m["task_key"][idx]))
        return idx[order]

    def structures(self) -> dict[str, dict[str, Any]]:
        """Structure parameters by structure id, from the committed tasks."""
        out: dict[str, dict[str, Any]] = {}
        for raw in self._f["tasks/structure_json"][: self._n_tasks]:
            s = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            out[s["structure_id"]] = s
        return out

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> SimulatedDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _normalised(config: dict[str, Any]) -> dict[str, Any]:
    """The stored world read back with today's defaults: a file made before a world field existed (e.g.
    ``particle_shapes``, per-image optics ranges) holds the same world as one that states the default,
    so it still resumes."""
    raw = config.get("preset_json")
    if not raw:
        return config
    from training.sim.worlds import World

    try:
        world = World.model_validate_json(raw).model_dump(mode="json")
    except ValueError:
        return config
    return config | {"preset_json": world}
