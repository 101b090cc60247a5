"""All transitions of a split as flat tensors with global index arrays.

``TrainingData.from_stores`` concatenates the packed stores of every sub-dataset once: proprio and
actions are normalised at build time and live on the sampling device; trajectory index arrays
(first frame, first action, length, sub-dataset) are global int64 tensors there too, so sampling
is pure index arithmetic. Frames (and saliency maps) are the only large arrays; where they go:

* ``frame_storage="device"``: one tensor on the training device, where sampling runs too (on CPU
  a single store is used in place, as a zero-copy view of its memory map, whatever its size);
* ``"host"``: left in the stores' memory maps and gathered per batch on the CPU - for datasets
  larger than device memory. Sampling then runs on the CPU as well, and a CUDA run receives the
  finished batch from pinned memory without a host sync, so gathering the next batch overlaps
  the GPU's work on the current one;
* ``"auto"``: ``device`` when what must be copied there (frames and saliency maps together)
  takes less than half of its free memory (RAM for CPU), else ``host``.
"""

import logging
import os
import warnings
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bridge_torch.data.actions import normalize
from bridge_torch.data.config import LoadConfig, SampleConfig
from bridge_torch.data.store import PackedStore

log = logging.getLogger(__name__)
DEVICE_MEMORY_FRACTION = 0.5  # "auto" puts frames on the device below this share of free memory
COPY_CHUNK_BYTES = 256 << 20  # host -> device copies go in pieces of this size (progress, RAM)


def read_only_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing a read-only memory map's buffer; callers only ever read it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(array)


class FrameSource:
    """A per-frame array of all stores, ``(N, *row_shape)``, gathered by global frame index."""

    def __init__(self, parts: list[np.ndarray | None], counts: list[int],
                 row_shape: tuple[int, ...], dtype: np.dtype) -> None:
        """``parts`` are the stores' arrays in order, ``counts`` their rows; a ``None`` part
        stands for ``count`` all-zero rows (a store without saliency maps). Rows are gathered
        from the memory maps until ``place`` puts them on a device."""
        self.row_shape = row_shape
        self.dtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
        self._parts = parts
        self._ends = np.cumsum(np.asarray(counts, dtype=np.int64))
        self._starts = self._ends - np.asarray(counts, dtype=np.int64)
        self.num_rows = int(self._ends[-1])
        self._row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
        self.nbytes = self.num_rows * self._row_bytes
        self._tensor: torch.Tensor | None = None
        self._pin = False

    @property
    def on_device(self) -> bool:
        return self._tensor is not None

    def place(self, device: torch.device | None, *, pin: bool = False) -> None:
        """Hold all rows on ``device`` as one tensor, or (None) gather each batch from the
        memory maps on the host, into pinned memory if ``pin`` (for copies to CUDA)."""
        self._tensor = self._to_device(device) if device is not None else None
        self._pin = pin

    def zero_copy_on(self, device: torch.device) -> bool:
        """One store on CPU: its memory map is used in place (no RAM beyond the page cache)."""
        return device.type == "cpu" and len(self._parts) == 1 and self._parts[0] is not None

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """Rows at ``index`` (any shape; on ``device``, or the CPU for memory-map gathers)
        -> ``(*index.shape, *row_shape)`` on the same device as ``index``."""
        if self._tensor is not None:
            rows = self._tensor.index_select(0, index.reshape(-1))
        else:
            rows = self._gather_host(index.reshape(-1).numpy())
        return rows.view(*index.shape, *self.row_shape)

    def _to_device(self, device: torch.device) -> torch.Tensor:
        if self.zero_copy_on(device):
            return read_only_tensor(self._parts[0])
        out = torch.empty((self.num_rows, *self.row_shape), dtype=self.dtype, device=device)
        rows_per_copy = max(1, COPY_CHUNK_BYTES // self._row_bytes)
        with tqdm(total=self.nbytes >> 20, unit="MiB", desc=f"frames -> {device}",
                  disable=self.nbytes < COPY_CHUNK_BYTES) as progress:
            for part, start, end in zip(self._parts, self._starts, self._ends, strict=True):
                if part is None:
                    out[start:end].zero_()
                    continue
                for lo in range(0, part.shape[0], rows_per_copy):
                    piece = read_only_tensor(np.ascontiguousarray(part[lo:lo + rows_per_copy]))
                    out[start + lo:start + lo + piece.shape[0]].copy_(piece)
                    progress.update(piece.numel() * piece.element_size() >> 20)
        return out

    def _gather_host(self, wanted: np.ndarray) -> torch.Tensor:
        """Gather from the memory maps: the batch's rows grouped by store (one sort), then one
        fancy-index per store present. A batch of a many-store dataset touches hundreds of
        stores, so each group must cost little beyond its copy (a torch op's dispatch costs
        several times numpy's)."""
        out = torch.empty((wanted.size, *self.row_shape), dtype=self.dtype, pin_memory=self._pin)
        out_np = out.numpy()
        if wanted.size == 0:
            return out
        part_of = np.searchsorted(self._ends, wanted, side="right")
        order = np.argsort(part_of, kind="stable")
        part_ids, firsts = np.unique(part_of[order], return_index=True)
        for part_id, rows in zip(part_ids, np.split(order, firsts[1:]), strict=True):
            part = self._parts[part_id]
            if part is None:
                out_np[rows] = 0
            else:
                out_np[rows] = part[wanted[rows] - self._starts[part_id]]
        return out


def _free_memory_bytes(device: torch.device) -> int:
    """Free memory of the device: CUDA's free bytes, or MemAvailable from /proc for CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class TrainingData:
    """The arrays of one split, ready for index-only sampling on ``device``; batches are
    delivered on ``batch_device`` (the training device). The two differ when frames are
    gathered from the memory maps for a CUDA run: sampling then runs on the CPU, next to the
    memory maps, and the finished batch is copied to the GPU without waiting for it.

    Attributes (all on ``device``):
        proprio: float32 (N, P) normalised proprio of every frame.
        actions: float32 (M, A) relabelled (or raw) and normalised actions.
        traj_frame_start, traj_action_start, traj_length, traj_sub_dataset: int64 (n,).
        traj_has_saliency: bool (n,).
        sub_dataset_traj_start: int64 (S+1,) trajectories of sub-dataset s are
            ``sub_dataset_traj_start[s] : sub_dataset_traj_start[s+1]``.
        has_goals: whether batches carry goals (fixed when the data is opened, as saliency is).
    """

    def __init__(self, *, frames: FrameSource, saliency: FrameSource | None,
                 arrays: dict[str, torch.Tensor], sub_dataset_traj_start: list[int],
                 image_size: tuple[int, int], device: torch.device,
                 batch_device: torch.device, has_goals: bool) -> None:
        self.frames, self.saliency, self.has_goals = frames, saliency, has_goals
        self.device, self.batch_device = device, batch_device
        self.image_size = image_size
        self.proprio, self.actions = arrays["proprio"], arrays["actions"]
        self.traj_frame_start = arrays["traj_frame_start"]
        self.traj_action_start = arrays["traj_action_start"]
        self.traj_length = arrays["traj_length"]
        self.traj_sub_dataset = arrays["traj_sub_dataset"]
        self.traj_has_saliency = arrays["traj_has_saliency"]
        self.sub_dataset_traj_start = sub_dataset_traj_start
        self.num_transitions, self.num_trajectories = len(self.actions), len(self.traj_length)
        self.action_dim, self.proprio_dim = self.actions.shape[1], self.proprio.shape[1]

    @property
    def num_sub_datasets(self) -> int:
        return len(self.sub_dataset_traj_start) - 1

    @property
    def has_saliency(self) -> bool:
        return self.saliency is not None

    def gather_frames(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 frames ``(*index.shape, H, W, 3)`` at global frame indices."""
        return self.frames.gather(index)

    def gather_saliency(self, index: torch.Tensor) -> torch.Tensor:
        """float16 maps ``(*index.shape, H, W)``; zeros for trajectories without saliency."""
        if self.saliency is None:
            raise ValueError("saliency was not loaded: build TrainingData with load_saliency=True")
        return self.saliency.gather(index)

    @classmethod
    def from_stores(cls, sub_datasets: list[list[PackedStore]], stats: dict[str, Any],
                    load: LoadConfig, sample: SampleConfig,
                    device: torch.device | str) -> "TrainingData":
        """Concatenate the stores of every sub-dataset (in order) and normalise once.

        Args:
            sub_datasets: one list of stores per sub-dataset (``bridgedata.include`` entry).
            stats: ``{"actions": {...}, "proprio": {...}}`` with mean/std/min/max lists - the
                merged train-split statistics of the action kind selected by
                ``sample.relabel_actions`` (unused when ``sample.normalization_type == "none"``).
            load: camera, frame_storage, load_goals, load_saliency.
            sample: relabel_actions and normalization_type (the actions' preparation).
            device: the training device.
        """
        if load.load_goals is None or load.load_saliency is None:
            raise ValueError("data.load.load_goals / load_saliency are null: the training config "
                             "derives them from the agent; set them to true or false")
        device = torch.device(device)
        stores = _check_stores(sub_datasets, load.camera)
        _check_stats(stats, stores[0], sample.normalization_type)
        height, width = stores[0].image_size
        counts = [s.proprio.shape[0] for s in stores]
        frames = FrameSource([s.frames(load.camera) for s in stores], counts, (height, width, 3),
                             np.dtype(np.uint8))
        sources = [frames]
        saliency = None
        if load.load_saliency:
            if all(s.saliency is None for s in stores):
                log.warning("load_saliency=True but no store has saliency maps: every "
                            "saliency_mask will be False")
            saliency = FrameSource([s.saliency for s in stores], counts, (height, width),
                                   np.dtype(np.float16))
            sources.append(saliency)
        on_device = _frames_on_device(load.frame_storage, sources, device)
        for source in sources:
            source.place(device if on_device else None, pin=device.type == "cuda")
        sampling_device = device if on_device else torch.device("cpu")
        log.info("training data: %d stores, %d transitions, frames %s (%.1f MiB)", len(stores),
                 sum(s.num_transitions for s in stores),
                 "on " + str(device) if frames.on_device else "gathered from memory maps",
                 frames.nbytes / 2**20)
        traj_start = np.cumsum([0] + [sum(s.num_trajectories for s in sub)
                                      for sub in sub_datasets]).tolist()
        arrays = _index_arrays(sub_datasets, stores)
        arrays["proprio"] = normalize(_concat([s.proprio for s in stores]), stats.get("proprio"),
                                      sample.normalization_type)
        action_arrays = [s.actions_relabeled if sample.relabel_actions else s.actions
                         for s in stores]
        arrays["actions"] = normalize(_concat(action_arrays), stats.get("actions"),
                                      sample.normalization_type)
        arrays = {name: value.to(sampling_device) for name, value in arrays.items()}
        return cls(frames=frames, saliency=saliency, arrays=arrays,
                   sub_dataset_traj_start=traj_start, image_size=(height, width),
                   device=sampling_device, batch_device=device, has_goals=load.load_goals)


def _frames_on_device(storage: str, sources: list[FrameSource], device: torch.device) -> bool:
    """Where frames and saliency maps live (both in the same place, so one device samples):
    ``frame_storage`` "device" / "host", or for "auto" the device when what must be copied
    there takes less than DEVICE_MEMORY_FRACTION of its free memory (RAM for CPU)."""
    if storage != "auto":
        return storage == "device"
    to_copy = sum(s.nbytes for s in sources if not s.zero_copy_on(device))
    return to_copy == 0 or to_copy < DEVICE_MEMORY_FRACTION * _free_memory_bytes(device)


def _concat(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([np.asarray(a, dtype=np.float32) for a in arrays]))


def _check_stores(sub_datasets: list[list[PackedStore]], camera: str) -> list[PackedStore]:
    """Flatten the sub-datasets; every store must share image size, camera and dimensions."""
    if not sub_datasets:
        raise ValueError("TrainingData.from_stores: no sub-datasets given")
    for i, sub in enumerate(sub_datasets):
        if not sub:
            raise ValueError(f"TrainingData.from_stores: sub-dataset {i} has no stores")
    stores = [store for sub in sub_datasets for store in sub]
    first = stores[0]
    for store in stores:
        if camera not in store.cameras:
            raise ValueError(f"store {store.path}: no camera {camera!r} (has {store.cameras})")
        found = (tuple(store.image_size), store.proprio.shape[1], store.actions.shape[1])
        expected = (tuple(first.image_size), first.proprio.shape[1], first.actions.shape[1])
        if found != expected:
            raise ValueError(f"store {store.path}: (image_size, proprio_dim, action_dim) = "
                             f"{found}, but {first.path} has {expected}")
    return stores


def _check_stats(stats: dict[str, Any], store: PackedStore, kind: str) -> None:
    if kind == "none":
        return
    dims = {"actions": store.actions.shape[1], "proprio": store.proprio.shape[1]}
    for name, dim in dims.items():
        entry = stats.get(name)
        if entry is None:
            raise ValueError(f"stats: missing key {name!r} (needed for normalization_type={kind})")
        for key in ("mean", "std") if kind == "normal" else ("min", "max"):
            if len(entry.get(key, [])) != dim:
                raise ValueError(f"stats[{name!r}][{key!r}] must have {dim} values, got "
                                 f"{entry.get(key)}")


def _index_arrays(sub_datasets: list[list[PackedStore]],
                  stores: list[PackedStore]) -> dict[str, torch.Tensor]:
    """Global per-trajectory index arrays: store-local starts shifted by the store offsets."""
    frame_offsets = np.cumsum([0] + [s.proprio.shape[0] for s in stores])
    action_offsets = np.cumsum([0] + [s.actions.shape[0] for s in stores])
    sub_ids = [i for i, sub in enumerate(sub_datasets) for _ in sub]
    columns: dict[str, list[np.ndarray]] = {"traj_frame_start": [], "traj_action_start": [],
                                            "traj_length": [], "traj_sub_dataset": [],
                                            "traj_has_saliency": []}
    for k, store in enumerate(stores):
        columns["traj_frame_start"].append(np.asarray(store.traj_frame_start) + frame_offsets[k])
        columns["traj_action_start"].append(np.asarray(store.traj_action_start)
                                            + action_offsets[k])
        columns["traj_length"].append(np.asarray(store.traj_length))
        columns["traj_sub_dataset"].append(np.full(store.num_trajectories, sub_ids[k]))
        columns["traj_has_saliency"].append(np.asarray(store.traj_has_saliency))
    out = {name: torch.from_numpy(np.concatenate(parts).astype(np.int64))
           for name, parts in columns.items() if name != "traj_has_saliency"}
    out["traj_has_saliency"] = torch.from_numpy(np.concatenate(columns["traj_has_saliency"]))
    return out
