"""Device-resident training data: index-only loaders, images gathered and augmented in
``on_after_batch_transfer`` (checked on the CPU, the device the batch is on)."""

import itertools
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS
from fake_datasets import ignore_cifar_md5, write_fake_cifar10, write_fake_mnist
from torchvision.transforms import v2

from hyperdarts.cli import main
from hyperdarts.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    MNISTDataModule,
    augment_on_device,
    mix_seed,
    seed_field,
)
from hyperdarts.errors import ConfigError

CROP_X, CROP_Y, FLIP, CUTOUT_Y, CUTOUT_X = (0, 12), (12, 12), (24, 1), (25, 16), (41, 16)
MODULES: dict[str, type[ImageDataModule]] = {
    "digits": DigitsDataModule,
    "mnist": MNISTDataModule,
    "fashion": FashionMNISTDataModule,
    "cifar": CIFAR10DataModule,
}


def make(kind: str, root: Path, monkeypatch: pytest.MonkeyPatch, **kwargs) -> ImageDataModule:
    if kind == "digits":
        dm: ImageDataModule = DigitsDataModule(**{"batch_size": 16, **kwargs})
    elif kind in ("mnist", "fashion"):
        write_fake_mnist(root, name={"mnist": "MNIST", "fashion": "FashionMNIST"}[kind], n_train=64)
        dm = MODULES[kind](root=str(root), batch_size=8, download=False, **kwargs)
    else:
        ignore_cifar_md5(monkeypatch)
        write_fake_cifar10(root, n_per_batch=20)
        dm = CIFAR10DataModule(root=str(root), batch_size=8, download=False, **kwargs)
    dm.setup("fit")
    return dm


def batches(dm: ImageDataModule, n: int, transfer: bool = True) -> list:
    """The first n training batches, as a training step sees them."""
    loader = dm.train_dataloader()
    items = itertools.islice(loader, n)
    raw = [item[0] if dm.paired else item for item in items]
    return [dm.on_after_batch_transfer(batch, 0) for batch in raw] if transfer else raw


def assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    else:
        assert type(a) is type(b) and len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b, strict=True):  # type: ignore[call-overload]
            assert_same(x, y)


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("paired", [True, False])
def test_unaugmented_resident_batches_equal_the_plain_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, paired: bool
) -> None:
    options = {"paired": paired, "augment": False}
    plain = batches(make(kind, tmp_path, monkeypatch, **options), 3, transfer=False)
    resident_dm = make(kind, tmp_path, monkeypatch, device_resident=True, **options)
    raw = batches(resident_dm, 3, transfer=False)
    # The loader carries only indices and seeds, int64.
    keys = raw[0]["weight"] if paired else raw[0]
    assert keys.index.dtype == keys.seed.dtype == torch.int64
    assert int(keys.seed.max()) >= 2**40  # 63-bit seeds survive collation
    assert_same(plain, batches(resident_dm, 3))


def reference_crop(raw: torch.Tensor, seed: int, dm: ImageDataModule) -> torch.Tensor:
    """torchvision's path, done by hand: zero-pad the uint8 image by 4, crop at the seed's
    offsets, mirror on its flip bit, then scale and normalize."""
    seed_t = torch.tensor(seed)
    dx, dy = (int(seed_field(seed_t, f)) % 9 for f in (CROP_X, CROP_Y))
    crop = torch.nn.functional.pad(raw, (4, 4, 4, 4))[:, dy : dy + 32, dx : dx + 32]
    if int(seed_field(seed_t, FLIP)):
        crop = crop.flip(-1)
    crop = v2.functional.to_dtype(crop, torch.float32, scale=True)
    return v2.functional.normalize(crop, list(dm.mean), list(dm.std))


def test_cifar_crop_and_flip_follow_the_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dm = make("cifar", tmp_path, monkeypatch, device_resident=True, paired=False)
    train_raw = torch.from_numpy(dm._open(train=True, download=False).data).permute(0, 3, 1, 2)
    for keys in batches(dm, 2, transfer=False):
        x, y = dm.on_after_batch_transfer(keys, 0)
        assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
        for image, index, seed in zip(x, keys.index.tolist(), keys.seed.tolist(), strict=True):
            assert torch.equal(image, reference_crop(train_raw[index], seed, dm))
        assert torch.equal(dm.on_after_batch_transfer(keys, 0)[0], x)  # same seed, same image
        assert torch.equal(y, torch.as_tensor(dm._open(True, False).targets)[keys.index])

    # Over many seeds of one image, every offset and both mirrors occur; found by matching pixels.
    image = dm._resident.normalized(torch.tensor([0]))
    pad_value = dm._resident.pad_value
    candidates = {}
    padded = torch.nn.functional.pad(train_raw[0], (4, 4, 4, 4))
    for dx, dy, flip in itertools.product(range(9), range(9), (0, 1)):
        crop = padded[:, dy : dy + 32, dx : dx + 32]
        crop = crop.flip(-1) if flip else crop
        crop = v2.functional.to_dtype(crop, torch.float32, scale=True)
        candidates[(dx, dy, flip)] = v2.functional.normalize(crop, list(dm.mean), list(dm.std))
    seeds = torch.tensor([mix_seed(7, k) for k in range(300)])
    out = augment_on_device(image.expand(300, -1, -1, -1), seeds, 4, pad_value, flip=True)
    seen = set()
    for augmented in out:
        matches = [key for key, crop in candidates.items() if torch.equal(crop, augmented)]
        assert matches  # some crop of the zero-padded image, possibly mirrored
        seen.update(matches)
    assert {dx for dx, _, _ in seen} == set(range(9))
    assert {dy for _, dy, _ in seen} == set(range(9))
    assert {flip for _, _, flip in seen} == {0, 1}


def expected_square(seed: int, size: int, height: int, width: int) -> torch.Tensor:
    seed_t = torch.tensor(seed)
    y, x = int(seed_field(seed_t, CUTOUT_Y)) % height, int(seed_field(seed_t, CUTOUT_X)) % width
    mask = torch.zeros(height, width, dtype=torch.bool)
    top, left = max(y - size // 2, 0), max(x - size // 2, 0)
    mask[top : y - size // 2 + size, left : x - size // 2 + size] = True
    return mask


def test_cutout_zeroes_the_seeded_clipped_square() -> None:
    seeds = torch.tensor([mix_seed(3, k) for k in range(400)])
    out = augment_on_device(torch.ones(400, 2, 10, 12), seeds, cutout=4)
    holes = out == 0
    assert torch.equal(holes[:, 0], holes[:, 1])  # the same square in every channel
    for hole, seed in zip(holes[:, 0], seeds.tolist(), strict=True):
        assert torch.equal(hole, expected_square(seed, 4, 10, 12))
    sizes = holes[:, 0].sum((1, 2))
    assert int(sizes.max()) == 16 and int(sizes.min()) == 4  # whole; a quarter at a corner
    assert len(set(sizes.tolist())) > 2  # clipped at the borders


def test_cutout_through_the_data_module() -> None:
    dm = DigitsDataModule(batch_size=16, paired=False, cutout=3, device_resident=True)
    dm.setup("fit")
    keys = batches(dm, 1, transfer=False)[0]
    x, _ = dm.on_after_batch_transfer(keys, 0)
    unaugmented = dm._resident.normalized(keys.index)
    assert not (unaugmented == 0).any()  # normalized digits have no exact zeros
    for image, seed in zip(x, keys.seed.tolist(), strict=True):
        assert torch.equal(image[0] == 0, expected_square(seed, 3, 8, 8))


def former_float32_batch(
    images: torch.Tensor, labels: torch.Tensor, keys: object, dm: ImageDataModule
) -> list[torch.Tensor]:
    """What the float32 storage made of a batch: the whole split scaled and normalized up front,
    padded with the normalized black (the code this storage replaced, verbatim)."""
    normalized = v2.functional.to_dtype(images, torch.float32, scale=True)
    normalized = v2.functional.normalize(normalized, list(dm.mean), list(dm.std))
    black = torch.zeros(dm.num_channels, 1, 1)
    pad_value = v2.functional.normalize(black, list(dm.mean), list(dm.std)).flatten()
    padding, flip = dm._device_augmentation()
    index, seed = keys.index, keys.seed  # type: ignore[attr-defined]
    x = augment_on_device(normalized[index], seed, padding, pad_value, flip, dm.cutout)
    return [x, torch.as_tensor(labels, dtype=torch.long)[index]]


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("storage", ["native", "float32"])
def test_resident_batches_equal_the_former_float32_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, storage: str
) -> None:
    """uint8 storage (and float32 storage, forced by reading the raw images as floats) gives the
    bits the normalized float32 storage gave, with every augmentation on."""
    raw_images = MODULES[kind]._raw_images
    if storage == "float32":

        def as_float(self: ImageDataModule, train: object) -> tuple[torch.Tensor, torch.Tensor]:
            images, labels = raw_images(self, train)  # type: ignore[arg-type]
            return v2.functional.to_dtype(images, torch.float32, scale=True), labels

        monkeypatch.setattr(MODULES[kind], "_raw_images", as_float)
    dm = make(kind, tmp_path, monkeypatch, device_resident=True, cutout=5)
    stored = dm._resident.images  # type: ignore[union-attr]
    native = torch.uint8 if kind != "digits" else torch.float32
    assert stored.dtype == (native if storage == "native" else torch.float32)
    images, labels = raw_images(dm, dm._load_splits()[0])
    for batch in batches(dm, 3, transfer=False):
        for keys in batch.values():
            expected = former_float32_batch(images, labels, keys, dm)
            assert_same(dm.on_after_batch_transfer(keys, 0), expected)


@pytest.mark.parametrize("kind", ["mnist", "fashion", "cifar"])
def test_uint8_pixels_are_stored_in_a_quarter_of_float32s_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    dm = make(kind, tmp_path, monkeypatch, device_resident=True)
    images = dm._resident.images  # type: ignore[union-attr]
    n = len(dm.weight_indices) + len(dm.arch_indices)
    assert images.shape == (n, dm.num_channels, dm.image_size, dm.image_size)
    assert images.dtype == torch.uint8 and images.is_contiguous()
    float32_bytes = images.numel() * torch.finfo(torch.float32).bits // 8
    assert images.element_size() * images.numel() * 4 == float32_bytes


def test_digits_keep_float32_storage() -> None:
    """Digits are 0..16 scaled to [0, 1] by sixteenths: not uint8 pixels, so stored as float32,
    unnormalized (normalization happens per batch)."""
    dm = DigitsDataModule(batch_size=16, device_resident=True)
    dm.setup("fit")
    images = dm._resident.images  # type: ignore[union-attr]
    assert images.dtype == torch.float32
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0


def test_a_resumed_resident_loader_continues_with_the_same_batches() -> None:
    def loaders() -> tuple[DigitsDataModule, object]:
        data = DigitsDataModule(batch_size=16, cutout=3, device_resident=True)
        data.setup("fit")
        return data, data.train_dataloader()

    dm, uninterrupted = loaders()
    for loader in uninterrupted.flattened:
        loader.sampler.set_epoch(1)
    expected = [dm.on_after_batch_transfer(b, 0) for b, _, _ in itertools.islice(uninterrupted, 5)]
    dm, resumed = loaders()
    torch.manual_seed(12345)
    for loader in resumed.flattened:
        loader.load_state_dict({"epoch": 1, "batches": 2})
    got = [dm.on_after_batch_transfer(b, 0) for b, _, _ in itertools.islice(resumed, 3)]
    assert_same(expected[2:], got)


def test_fit_fast_dev_run_device_resident(tmp_path: Path) -> None:
    args = ["fit", "--config", str(CONFIGS / "digits.yaml")]
    args += ["--trainer.default_root_dir", str(tmp_path / "runs")]
    args += ["--model.init_args.init_channels", "4", "--data.init_args.batch_size", "16"]
    args += ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.fast_dev_run", "1", "--data.init_args.device_resident", "true"]
    cli = main(args)
    assert cli.datamodule.device_resident is True
    assert cli.trainer.global_step == 2


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_device_resident_is_rejected(value: object) -> None:
    with pytest.raises(ConfigError, match="device_resident must be true or false"):
        DigitsDataModule(device_resident=value)  # type: ignore[arg-type]
