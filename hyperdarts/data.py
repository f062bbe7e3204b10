"""LightningDataModules that feed a bilevel (DARTS-style) search, and the retraining after it.

The training split of each dataset is cut once, with a seeded permutation, into a "weight" part
(trains the network weights) and an "arch" part (trains the architecture parameters and doubles as
the validation set, as in DARTS). The dataset's own test split stays held out for the final report.
For retraining (``paired=False``) only the weight part trains; the arch part is the validation set
that picks the best epoch, so the test split is never used for model selection.

Training loaders resume exactly: each epoch's order is a function of (seed, epoch) alone, every
sample's random augmentation has its own seed, and the loaders are stateful, so a run restarted from
a mid-epoch checkpoint continues with the batches, crops and flips it would have seen.

With ``device_resident=True`` the training images live in one tensor that moves to the training
device once, as the dataset's raw uint8 pixels where it has them (a quarter of float32's memory),
else as float32 in [0, 1]; the training loaders then carry only (index, seed) pairs, and each
batch's images are gathered, scaled, normalized and augmented, on that device, in
``on_after_batch_transfer``. Scaling and normalizing are elementwise, so doing them per batch gives
the same bits as doing them to the whole split up front.
"""

import hashlib
import math
import os
import pickle
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import lightning
import torch
from lightning.pytorch.utilities import CombinedLoader
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset
from torchvision import datasets
from torchvision.transforms import v2

from hyperdarts.errors import ConfigError, HyperDARTSError

Transform = Callable[[Any], torch.Tensor]

# What torchvision raises while fetching or parsing: RuntimeError (MNIST download failed or files
# missing, CIFAR checksum mismatch, bad IDX shape), OSError/URLError (CIFAR download), and the
# parsing errors a truncated or corrupt IDX file or pickle produces.
_READ_ERRORS = (
    RuntimeError,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    EOFError,
    AssertionError,
    pickle.UnpicklingError,
)

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DatasetNotFoundError(HyperDARTSError, RuntimeError):
    """The dataset files are missing or unreadable; the message says where to put which files."""


class SeededIndex(NamedTuple):
    """An index with the seed of its sample's random augmentation (see EpochSampler)."""

    index: int
    seed: int


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers: distinct inputs give unrelated generators (unlike seed + epoch,
    where stream 1 at epoch 1 would repeat stream 2 at epoch 0)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _TransformedView(Dataset):
    """Applies a transform on read, so one loaded dataset serves augmented and plain views.

    A ``SeededIndex`` read draws its augmentation from its own seed, not from the global RNG: the
    draw is then the same whether the batch was read before or after a restart, prefetched or not,
    in the main process or in a worker.
    """

    def __init__(self, base: Dataset, transform: Transform) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | SeededIndex) -> tuple[torch.Tensor, Any]:
        if not isinstance(key, SeededIndex):
            return self._read(key)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key.seed)
            return self._read(key.index)

    def _read(self, index: int) -> tuple[torch.Tensor, Any]:
        image, label = self.base[index]
        return self.transform(image), label


class _SeededSubset(Subset):
    """A Subset that passes a ``SeededIndex``'s seed through to the view it selects from."""

    def __getitem__(self, key: int | SeededIndex) -> tuple[torch.Tensor, Any]:
        if isinstance(key, SeededIndex):
            return self.dataset[SeededIndex(self.indices[key.index], key.seed)]
        return self.dataset[self.indices[key]]

    def __getitems__(self, keys: list[int | SeededIndex]) -> list[tuple[torch.Tensor, Any]]:
        return [self[key] for key in keys]


class _ResidentKeys(NamedTuple):
    """What a device-resident training read yields: the image's index in the training split and
    its augmentation seed. Collated, both are int64 tensors (seeds are 63-bit)."""

    index: Any
    seed: Any


class _Resident(NamedTuple):
    """The training split of a device-resident data module, all on one device.

    ``images`` are stored compactly (see ``ImageDataModule._resident_tensors``) and normalized per
    batch by ``normalized``; ``mean`` and ``std`` are (C, 1, 1) float32 tensors kept here because
    torchvision's ``normalize`` would copy them to the device on every call, which waits for it.
    ``pad_value`` (C,) is the normalized value of black, the crop's border.
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    pad_value: torch.Tensor

    def to(self, device: torch.device) -> "_Resident":
        return _Resident(*(t.to(device) for t in self))

    def normalized(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` as float32 normalized images: torchvision's ToDtype(scale=True) then
        Normalize, the same elementwise operations, so the same bits as normalizing the whole split
        at once (the former float32 storage) and as the CPU path."""
        images = v2.functional.to_dtype(self.images[index], torch.float32, scale=True)
        return images.sub(self.mean).div_(self.std)


class _IndexView(Dataset):
    """The training split of a device-resident data module: reads return indices, not images."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: SeededIndex) -> _ResidentKeys:
        if not isinstance(key, SeededIndex):
            raise TypeError(f"a device-resident training read needs a SeededIndex, got {key!r}")
        return _ResidentKeys(key.index, key.seed)


# Disjoint bit fields of a sample's 63-bit seed, (shift, width), for the on-device augmentation.
_CROP_X = (0, 12)
_CROP_Y = (12, 12)
_FLIP = (24, 1)
_CUTOUT_Y = (25, 16)
_CUTOUT_X = (41, 16)


def seed_field(seeds: torch.Tensor, field: tuple[int, int]) -> torch.Tensor:
    """The bits ``field`` = (shift, width) of int64 ``seeds``, as non-negative int64."""
    shift, width = field
    return (seeds >> shift) & ((1 << width) - 1)


def augment_on_device(
    images: torch.Tensor,
    seeds: torch.Tensor,
    padding: int = 0,
    pad_value: torch.Tensor | None = None,
    flip: bool = False,
    cutout: int = 0,
) -> torch.Tensor:
    """Augment a batch of normalized images (B, C, H, W) where they are, one draw per seed.

    Pad-and-crop (offsets 0..2*padding each way, the border filled with ``pad_value``, (C,) or
    (C, 1, 1): the normalized value of black, which makes it torchvision's zero-padded crop), then
    a horizontal mirror (``flip``), then Cutout (a ``cutout`` square zeroed at a centre anywhere in
    the image, clipped at the borders). Every draw is a disjoint bit field of the sample's seed
    taken modulo its range: the crop's x and y offsets (bits 0-11, 12-23), the mirror (bit 24),
    Cutout's centre row and column (bits 25-40, 41-56). The draws are uniform up to a modulo bias
    (each value's probability off by less than 1/4096; none where the range is a power of two)
    and a function of the seed alone: the CPU path's distribution, not its pixels (torchvision
    draws from its own generator).
    """
    batch, channels, height, width = images.shape
    device = images.device
    if padding or flip:
        rows = torch.arange(height, device=device).expand(batch, height)
        cols = torch.arange(width, device=device).expand(batch, width)
        source = images
        if padding:
            span = 2 * padding + 1
            fill = images.new_zeros(channels) if pad_value is None else pad_value
            source = (
                fill.reshape(1, channels, 1, 1)
                .expand(batch, channels, height + 2 * padding, width + 2 * padding)
                .clone()
            )
            source[..., padding : padding + height, padding : padding + width] = images
            rows = rows + (seed_field(seeds, _CROP_Y) % span)[:, None]
            cols = cols + (seed_field(seeds, _CROP_X) % span)[:, None]
        if flip:
            mirrored = seed_field(seeds, _FLIP).bool()[:, None]
            cols = torch.where(mirrored, cols.flip(1), cols)
        images = source[
            torch.arange(batch, device=device)[:, None, None, None],
            torch.arange(channels, device=device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
    if cutout:
        top = (seed_field(seeds, _CUTOUT_Y) % height - cutout // 2)[:, None]
        left = (seed_field(seeds, _CUTOUT_X) % width - cutout // 2)[:, None]
        row = torch.arange(height, device=device)[None, :]
        col = torch.arange(width, device=device)[None, :]
        in_rows = (row >= top) & (row < top + cutout)
        in_cols = (col >= left) & (col < left + cutout)
        square = in_rows[:, :, None] & in_cols[:, None, :]
        images = images.masked_fill(square[:, None], 0.0)
    return images


class EpochSampler(DistributedSampler):
    """Shuffles anew every epoch, as a function of (seed, epoch) alone, and can start mid-epoch.

    An order drawn from a generator that advances across epochs cannot be rebuilt after a restart
    without replaying every earlier epoch; one derived from (seed, epoch) can, and ``resume`` skips
    what the interrupted run had already consumed. Yields ``SeededIndex``: each sample's
    augmentation seed is derived from (seed, epoch, index) too. A DistributedSampler that shards by
    rank itself, so that Lightning keeps it under DDP instead of wrapping it in its own.
    """

    def __init__(
        self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0, epoch: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.epoch = epoch
        self._skip: tuple[int, int] | None = None  # (epoch, samples already consumed)

    def resume(self, epoch: int, samples: int) -> None:
        """Start ``epoch`` after its first ``samples`` samples (of this rank), once."""
        self.epoch = epoch
        self._skip = (epoch, samples)

    def __iter__(self) -> Iterator[SeededIndex]:  # type: ignore[override]
        skip = self._skip[1] if self._skip is not None and self._skip[0] == self.epoch else 0
        self._skip = None  # a second pass in the same epoch (a cycled loader) starts at 0
        for k in self._order()[skip:]:
            yield SeededIndex(k, mix_seed(self.seed, self.epoch, k))

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(len(self.dataset), generator=generator).tolist()  # type: ignore[arg-type]
        order = (order * math.ceil(self.total_size / len(order)))[: self.total_size]  # even shards
        return order[self.rank : self.total_size : self.num_replicas]


class ResumableLoader(DataLoader):
    """A training loader that Lightning saves in checkpoints and restores (it is stateful).

    Its order comes from an EpochSampler, so its state is only where the run stands: the epoch and
    the number of batches taken, as ``position(sampler)`` reports it. That count cannot be the
    loader's own: Lightning fetches one batch ahead of the step it runs.
    """

    def __init__(
        self, *args: Any, position: Callable[[EpochSampler], tuple[int, int]], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.position = position

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self.position(self.sampler)  # type: ignore[arg-type]
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # A shorter loader that max_size_cycle restarted within the epoch is that far into its pass.
        batches = state["batches"] % max(len(self), 1)
        self.sampler.resume(state["epoch"], batches * self.batch_size)  # type: ignore[attr-defined]


class Cutout:
    """Zero one ``size`` x ``size`` square at a uniformly random centre, clipped at the borders.

    DARTS's Cutout (DeVries & Taylor, 2017), applied to normalized tensors, so the square is at the
    dataset mean. The centre may lie anywhere in the image, so squares near a border are smaller.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ConfigError(f"cutout={size}: the square's side must be >= 1 (0 disables cutout)")
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        y, x = (int(torch.randint(n, ())) for n in (height, width))
        top, left = max(y - self.size // 2, 0), max(x - self.size // 2, 0)
        bottom = min(y - self.size // 2 + self.size, height)
        right = min(x - self.size // 2 + self.size, width)
        image = image.clone()
        image[..., top:bottom, left:right] = 0
        return image

    def __repr__(self) -> str:
        return f"Cutout(size={self.size})"


class ImageDataModule(lightning.LightningDataModule):
    """Base class: splits the training set into weight/arch parts and builds the loaders.

    Subclasses set the shape attributes (class-level, so they are readable before ``setup``,
    which the CLI needs to size the model) and implement ``_load_splits``.

    Args:
        paired: the search's loader, weight and arch batches side by side; ``False`` for
            retraining: one shuffled loader over the weight part.
        cutout: side of the Cutout square on training images (0: off), after any other
            augmentation and the normalization, as in DARTS.
        device_resident: keep the whole training split as one tensor on the training device
            (GPU) and augment there, so that loading never stalls a step. The training loaders
            then yield only (index, seed) pairs, which ``on_after_batch_transfer`` turns into
            images, after Lightning moved them to the device; validation and test read as usual.
            Order, resume and DDP sharding are unchanged; the random draws come from each
            sample's seed bits (see ``augment_on_device``): the same distribution as the CPU
            path's, not the same pixels. The split is stored as its raw uint8 pixels where the
            dataset has them (MNIST, Fashion-MNIST, CIFAR-10), else as float32 (digits), and each
            batch is scaled and normalized on the device: uint8 costs a quarter of float32's
            device memory (CIFAR-10's training split, 50000x3x32x32: 154 MB instead of 614 MB).
    """

    num_channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weight_indices: torch.Tensor
    arch_indices: torch.Tensor

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 64,
        num_workers: int = 0,
        download: bool = True,
        arch_fraction: float = 0.5,
        seed: int = 0,
        augment: bool = True,
        pin_memory: bool = False,
        paired: bool = True,
        cutout: int = 0,
        device_resident: bool = False,
    ) -> None:
        super().__init__()
        _validate(batch_size, num_workers, arch_fraction, cutout, device_resident)
        self.root = root
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.download = download
        self.arch_fraction = arch_fraction
        self.seed = seed
        self.augment = augment
        self.pin_memory = pin_memory
        self.paired = paired
        self.cutout = cutout
        self.device_resident = device_resident
        # The training split, on the device it was last used on; device_resident only.
        self._resident: _Resident | None = None
        self._views: tuple[Dataset, Dataset, Dataset] | None = None
        # Recorded so loggers and checkpoints show which data a run used.
        self.save_hyperparameters()

    def _load_splits(self) -> tuple[Dataset, Dataset]:
        """Return the raw (train, test) datasets; items are (image, label) before transforms."""
        raise NotImplementedError

    def eval_transform(self) -> Transform:
        """Transform for validation and test reads: normalization only."""
        return v2.Normalize(self.mean, self.std)

    def train_transform(self) -> Transform:
        """Transform for the training loaders; subclasses that augment override this."""
        return self.eval_transform()

    def _training_transform(self) -> Transform:
        base = self.train_transform()
        return v2.Compose([base, Cutout(self.cutout)]) if self.cutout else base

    def setup(self, stage: str | None = None) -> None:
        """Load the data once and cut the training split; later stages reuse the result."""
        if self._views is not None:
            return
        train, test = self._load_splits()
        n_train = len(train)  # type: ignore[arg-type]
        self.weight_indices, self.arch_indices = split_indices(
            n_train, self.arch_fraction, self.seed
        )
        self._check_batch_size()
        if self.device_resident:
            self._resident = self._resident_tensors(train)
        self._views = (
            _IndexView(n_train)
            if self.device_resident
            else _TransformedView(train, self._training_transform()),
            _TransformedView(train, self.eval_transform()),
            _TransformedView(test, self.eval_transform()),
        )

    def _raw_images(self, train: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """The training split's images (N, C, H, W), uint8 or float in [0, 1], and labels, read as
        whole arrays (for ``device_resident``)."""
        if isinstance(train, TensorDataset) and len(train.tensors) == 2:
            return train.tensors[0], train.tensors[1]
        raise ConfigError(
            f"device_resident=True is not supported by {type(self).__name__}: its training split "
            "is not an (images, labels) TensorDataset; set device_resident: false"
        )

    def _device_augmentation(self) -> tuple[int, bool]:
        """(crop padding, mirror) of the on-device augmentation; modules that augment override."""
        return 0, False

    def _resident_tensors(self, train: Dataset) -> _Resident:
        """The training split as kept on the device. uint8 images stay uint8, a quarter of
        float32's memory, and ``_Resident.normalized`` scales each batch; any other dtype is scaled
        to float32 in [0, 1] here, by the same ``to_dtype``, which leaves that step a no-op."""
        images, labels = self._raw_images(train)
        if images.dtype != torch.uint8:
            images = v2.functional.to_dtype(images, torch.float32, scale=True)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        pad_value = torch.zeros(self.num_channels, 1, 1).sub(mean).div_(std).flatten()
        labels = torch.as_tensor(labels, dtype=torch.long)
        return _Resident(images.contiguous(), labels, mean, std, pad_value)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Device-resident training batches: turn (index, seed) into augmented (x, y) where
        Lightning moved them. Any other batch passes through."""
        if isinstance(batch, _ResidentKeys):
            return self._resident_batch(batch)
        if (
            isinstance(batch, dict)
            and batch
            and all(isinstance(part, _ResidentKeys) for part in batch.values())
        ):
            return {name: self._resident_batch(part) for name, part in batch.items()}
        return batch

    def _resident_batch(self, keys: _ResidentKeys) -> list[torch.Tensor]:
        if self._resident is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its batches")
        index = keys.index
        if self._resident.images.device != index.device:  # first use there: move once, keep it
            self._resident = self._resident.to(index.device)
        resident = self._resident
        padding, flip = self._device_augmentation()
        x = augment_on_device(
            resident.normalized(index), keys.seed, padding, resident.pad_value, flip, self.cutout
        )
        # A list, as default_collate makes of the CPU path's (x, y).
        return [x, resident.labels[index]]

    def _check_batch_size(self) -> None:
        """Fail early: a training part smaller than one batch makes every step a short, partial
        batch. Unpaired, the arch part only validates, and validation takes partial batches."""
        sizes = {"weight": len(self.weight_indices), "arch": len(self.arch_indices)}
        trained = sizes if self.paired else {"weight": sizes["weight"]}
        if self.batch_size > min(trained.values()):
            rebalance = " or move arch_fraction toward 0.5" if self.paired else ""
            raise ConfigError(
                f"batch_size={self.batch_size} is larger than a part of the training split "
                f"(weight part: {sizes['weight']} examples, arch part: {sizes['arch']} examples); "
                f"set batch_size <= {min(trained.values())}{rebalance}"
            )

    def train_dataloader(self) -> CombinedLoader | DataLoader:
        """Paired: weight and arch batches side by side, ``batch = {"weight": (x, y),
        "arch": (x, y)}``. Unpaired: plain ``(x, y)`` batches of the weight part."""
        train_view = self._require_views()[0]
        weight = self._training_loader(_SeededSubset(train_view, self.weight_indices.tolist()), 1)
        if not self.paired:
            return weight
        arch = self._training_loader(_SeededSubset(train_view, self.arch_indices.tolist()), 2)
        return CombinedLoader({"weight": weight, "arch": arch}, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        """The arch part, unaugmented: the search's validation signal, as in DARTS."""
        return self._loader(Subset(self._require_views()[1], self.arch_indices.tolist()))

    def test_dataloader(self) -> DataLoader:
        """The held-out test split, unaugmented."""
        return self._loader(self._require_views()[2])

    def _require_views(self) -> tuple[Dataset, Dataset, Dataset]:
        if self._views is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders")
        return self._views

    def _training_loader(self, dataset: Dataset, stream: int) -> ResumableLoader:
        """A shuffled loader whose order is its own (stream) and its epoch's alone."""
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        sampler = EpochSampler(dataset, self.seed + stream, replicas, rank, self._next_epoch())
        return ResumableLoader(
            dataset,
            sampler=sampler,
            position=self._resume_point,
            drop_last=len(sampler) > self.batch_size,
            **self._loader_options(),
        )

    def _loader(self, dataset: Dataset) -> DataLoader:
        """An evaluation loader, in order."""
        return DataLoader(dataset, **self._loader_options())

    def _loader_options(self) -> dict[str, Any]:
        # Its own generator: a loader without one draws its workers' base seed from the global RNG
        # whenever it starts a pass, which would make the global RNG depend on how often
        # validation ran, and so differ between a resumed run and an uninterrupted one.
        return {
            "batch_size": self.batch_size,
            "generator": torch.Generator().manual_seed(self.seed),
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": self.pin_memory,
        }

    def _next_epoch(self) -> int:
        """The epoch a new training loader starts in (a restart may begin at any epoch)."""
        return self.trainer.fit_loop.epoch_progress.current.processed if self.trainer else 0

    def _resume_point(self, sampler: EpochSampler) -> tuple[int, int]:
        """(epoch, batches taken) where a restart from a checkpoint saved now continues."""
        if self.trainer is None:
            raise RuntimeError(
                "a training loader's state is its fit loop's: save it from a Trainer"
            )
        taken = self.trainer.fit_loop.epoch_loop.batch_progress.current.ready
        if taken >= self.trainer.num_training_batches:
            return sampler.epoch + 1, 0
        return sampler.epoch, taken


def _validate(
    batch_size: int, num_workers: int, arch_fraction: float, cutout: int, device_resident: bool
) -> None:
    """Reject bad arguments at construction, before any data is touched."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}; set a positive batch_size")
    if num_workers < 0:
        raise ConfigError(
            f"num_workers must be >= 0, got {num_workers}; use 0 to load in the main process"
        )
    if not 0 < arch_fraction < 1:
        raise ConfigError(
            f"arch_fraction must be strictly between 0 and 1, got {arch_fraction}; "
            "e.g. 0.5 gives half of the training split to architecture steps"
        )
    if cutout < 0:
        raise ConfigError(f"cutout must be >= 0, got {cutout}; 0 disables cutout, DARTS uses 16")
    if not isinstance(device_resident, bool):
        raise ConfigError(
            f"device_resident must be true or false, got {device_resident!r}; true keeps the "
            "training split on the training device and augments there"
        )


def split_indices(n: int, arch_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut ``range(n)`` into disjoint (weight, arch) index tensors, reproducibly for ``seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_arch = round(n * arch_fraction)
    return perm[n_arch:], perm[:n_arch]


class DigitsDataModule(ImageDataModule):
    """scikit-learn's bundled 8x8 digits: no download, so demos and tests run anywhere.

    ``download`` and ``augment`` are accepted for a uniform interface and ignored.
    """

    num_channels = 1
    image_size = 8
    num_classes = 10
    # Mean and std of all 1797 images after scaling 0..16 to [0, 1].
    mean = (0.3053,)
    std = (0.3760,)

    def _load_splits(self) -> tuple[Dataset, Dataset]:
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        x_train, x_test, y_train, y_test = train_test_split(
            images, labels, test_size=0.2, stratify=labels, random_state=self.seed
        )
        return TensorDataset(x_train, y_train), TensorDataset(x_test, y_test)


class TorchvisionDataModule(ImageDataModule):
    """A torchvision dataset on disk; converts its many failure modes into one clear error."""

    dataset_cls: type[datasets.VisionDataset]
    data_dir: str  # Where the files live, relative to ``root``.
    file_names: tuple[str, ...]
    source: str  # Where to get the files and how to place them.

    def eval_transform(self) -> Transform:
        return v2.Compose(self._to_normalized_tensor())

    def _to_normalized_tensor(self) -> list[Transform]:
        return [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
            v2.ToPureTensor(),
        ]

    def _raw_images(self, train: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """torchvision's parsed arrays, not per-sample PIL images: MNIST-likes hold a uint8
        (N, H, W) tensor, CIFAR a uint8 (N, H, W, C) numpy array."""
        data = torch.as_tensor(train.data)  # type: ignore[attr-defined]
        images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
        return images, torch.as_tensor(train.targets)  # type: ignore[attr-defined]

    def prepare_data(self) -> None:
        """Download once (Lightning calls this on local rank zero only); fetches both splits."""
        if self.download:
            self._open(train=True, download=True)

    def _load_splits(self) -> tuple[Dataset, Dataset]:
        return self._open(train=True, download=False), self._open(train=False, download=False)

    def _open(self, train: bool, download: bool) -> Dataset:
        try:
            return self.dataset_cls(self.root, train=train, download=download)  # type: ignore[call-arg]
        except _READ_ERRORS as error:
            raise DatasetNotFoundError(self._not_found_message(error, download)) from None

    def expected_files(self) -> list[str]:
        """Absolute paths of the files torchvision reads."""
        folder = os.path.join(_absolute(self.root), self.data_dir)
        return [os.path.join(folder, name) for name in self.file_names]

    def _not_found_message(self, error: BaseException, download: bool) -> str:
        """Say what is wrong, which files are expected where, and how to get them."""
        root = _absolute(self.root)
        folder = os.path.join(root, self.data_dir)
        files = self.expected_files()
        missing = [path for path in files if not os.path.isfile(path)]
        cause = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        if not missing:
            state = (
                "All expected files exist but could not be read: they look truncated or corrupt. "
                f"Delete {folder} and download them again."
            )
        elif download:
            state = "The download failed: check network access, or place the files by hand."
        else:
            state = "Some files are missing."
        fetch = "" if download else ", or set `download: true` to fetch them automatically"
        return "\n".join(
            [
                f"{self.dataset_cls.__name__} could not be loaded from {root} ({cause}).",
                "Expected files:",
                *(f"  {path}{' (missing)' if path in missing else ''}" for path in files),
                state,
                f"Get them from {self.source.format(folder=folder)}{fetch}.",
            ]
        )


class MNISTDataModule(TorchvisionDataModule):
    """MNIST handwritten digits, 1x28x28."""

    dataset_cls = datasets.MNIST
    data_dir = os.path.join("MNIST", "raw")
    file_names = _IDX_FILES
    source = (
        "http://yann.lecun.com/exdb/mnist/ or its mirror https://ossci-datasets.s3.amazonaws.com/"
        "mnist/ (gunzip the .gz files into {folder})"
    )
    num_channels = 1
    image_size = 28
    num_classes = 10
    mean = (0.1307,)
    std = (0.3081,)


class FashionMNISTDataModule(TorchvisionDataModule):
    """Fashion-MNIST clothing images, 1x28x28: a harder drop-in for MNIST."""

    dataset_cls = datasets.FashionMNIST
    data_dir = os.path.join("FashionMNIST", "raw")
    file_names = _IDX_FILES
    source = "https://github.com/zalandoresearch/fashion-mnist (gunzip the .gz files into {folder})"
    num_channels = 1
    image_size = 28
    num_classes = 10
    mean = (0.2860,)
    std = (0.3530,)


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 colour images, 3x32x32; the only module that augments (``augment``)."""

    dataset_cls = datasets.CIFAR10
    data_dir = "cifar-10-batches-py"
    file_names = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
    source = (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract it so that {folder} "
        "holds the files)"
    )
    num_channels = 3
    image_size = 32
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def train_transform(self) -> Transform:
        """The standard CIFAR augmentation (pad-and-crop, mirror) when ``augment`` is on."""
        if not self.augment:
            return self.eval_transform()
        flips: list[Transform] = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
        return v2.Compose(flips + self._to_normalized_tensor())

    def _device_augmentation(self) -> tuple[int, bool]:
        return (4, True) if self.augment else (0, False)


def _absolute(root: str) -> str:
    return os.path.abspath(os.path.expanduser(root))
