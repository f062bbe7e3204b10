"""Data modules: loading through real torchvision parsers, splits, loaders and error messages."""

import urllib.error
import urllib.request
from pathlib import Path

import lightning
import pytest
import torch
from fake_datasets import ignore_cifar_md5, write_fake_cifar10, write_fake_mnist

from hyperdarts.data import (
    CIFAR10DataModule,
    Cutout,
    DatasetNotFoundError,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    MNISTDataModule,
)

IDX_MODULES = [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every download fails the way it does offline: urlopen raises URLError."""

    def fail(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("simulated: no network")

    monkeypatch.setattr(urllib.request, "urlopen", fail)


def first_batch(dm: ImageDataModule) -> dict:
    batch, _, _ = next(iter(dm.train_dataloader()))
    return batch


def check_batch(batch: dict, dm: ImageDataModule) -> None:
    assert set(batch) == {"weight", "arch"}
    for x, y in batch.values():
        assert x.shape == (dm.batch_size, dm.num_channels, dm.image_size, dm.image_size)
        assert x.dtype == torch.float32
        assert y.shape == (dm.batch_size,)
        assert 0 <= y.min() and y.max() < dm.num_classes


@pytest.mark.parametrize(("module", "name"), IDX_MODULES)
def test_idx_datasets_load_through_torchvision(tmp_path: Path, module: type, name: str) -> None:
    write_fake_mnist(tmp_path, name=name, n_train=64, n_test=32)
    dm = module(root=str(tmp_path), batch_size=8, download=False)
    assert (dm.num_channels, dm.image_size, dm.num_classes) == (1, 28, 10)
    dm.prepare_data()
    dm.setup("fit")
    check_batch(first_batch(dm), dm)
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (8, 1, 28, 28)
    assert len(dm.test_dataloader().dataset) == 32


def test_cifar10_loads_and_augments_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ignore_cifar_md5(monkeypatch)
    write_fake_cifar10(tmp_path, n_per_batch=20, n_test=20)
    plain = CIFAR10DataModule(root=str(tmp_path), batch_size=8, augment=False, download=False)
    plain.setup("fit")
    check_batch(first_batch(plain), plain)
    train_view = plain.train_dataloader().iterables["weight"].dataset.dataset
    assert torch.equal(train_view[0][0], train_view[0][0])
    assert torch.equal(train_view[0][0], plain.val_dataloader().dataset.dataset[0][0])

    augmented = CIFAR10DataModule(root=str(tmp_path), batch_size=8, download=False)
    augmented.setup("fit")
    train_view = augmented.train_dataloader().iterables["weight"].dataset.dataset
    torch.manual_seed(0)
    reads = [train_view[0][0] for _ in range(8)]
    assert not all(torch.equal(reads[0], other) for other in reads[1:])
    val_view = augmented.val_dataloader().dataset
    assert torch.equal(val_view[0][0], val_view[0][0])


def test_digits_needs_no_files(tmp_path: Path) -> None:
    dm = DigitsDataModule(root=str(tmp_path / "absent"), batch_size=16)
    assert (dm.num_channels, dm.image_size, dm.num_classes) == (1, 8, 10)
    dm.prepare_data()
    dm.setup("fit")
    check_batch(first_batch(dm), dm)
    n_test = len(dm.test_dataloader().dataset)
    assert n_test == 360  # 20% of 1797, stratified.
    assert len(dm.weight_indices) + len(dm.arch_indices) == 1797 - n_test
    assert set(dm.test_dataloader().dataset.base.tensors[1].tolist()) == set(range(10))


def split_of(seed: int, arch_fraction: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    dm = DigitsDataModule(seed=seed, arch_fraction=arch_fraction)
    dm.setup("fit")
    return dm.weight_indices, dm.arch_indices


def test_split_is_disjoint_covering_and_seeded() -> None:
    weight, arch = split_of(seed=0, arch_fraction=0.25)
    n_train = 1797 - 360
    assert len(arch) == round(0.25 * n_train)
    assert not set(weight.tolist()) & set(arch.tolist())
    assert sorted(weight.tolist() + arch.tolist()) == list(range(n_train))
    same_weight, same_arch = split_of(seed=0, arch_fraction=0.25)
    assert torch.equal(weight, same_weight) and torch.equal(arch, same_arch)
    assert not torch.equal(arch, split_of(seed=1, arch_fraction=0.25)[1])


def test_loader_order_is_reproducible() -> None:
    def first_labels(seed: int) -> torch.Tensor:
        dm = DigitsDataModule(seed=seed, batch_size=32)
        dm.setup("fit")
        batch = first_batch(dm)
        return torch.cat([batch["weight"][1], batch["arch"][1]])

    assert torch.equal(first_labels(0), first_labels(0))
    assert not torch.equal(first_labels(0), first_labels(1))


@pytest.mark.parametrize("device_resident", [False, True])
def test_training_step_receives_both_parts(device_resident: bool) -> None:
    """The contract with the search module, checked through a real Trainer loop (and with the
    images gathered where Lightning put the batch, when they are device-resident)."""
    seen: list[tuple] = []

    class Probe(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(64, 10)

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            x, y = batch["weight"]
            seen.append((set(batch), x.shape, x.dtype, batch["arch"][0].shape, y.dtype))
            return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

        def validation_step(self, batch: tuple, batch_idx: int) -> None:
            x, y = batch
            assert x.shape[1:] == (1, 8, 8)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = lightning.Trainer(
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = DigitsDataModule(batch_size=16, device_resident=device_resident)
    trainer.fit(Probe(), datamodule=data)
    shape = torch.Size([16, 1, 8, 8])
    assert seen == [({"weight", "arch"}, shape, torch.float32, shape, torch.int64)] * 2


@pytest.mark.parametrize(("module", "name"), IDX_MODULES)
@pytest.mark.parametrize("download", [False, True])
def test_missing_idx_dataset_is_explained(
    tmp_path: Path, no_network: None, module: type, name: str, download: bool
) -> None:
    dm = module(root=str(tmp_path), download=download)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
        dm.setup("fit")
    message = str(info.value)
    assert name in message and str(tmp_path) in message
    assert str(tmp_path / name / "raw" / "train-images-idx3-ubyte") in message
    assert ("download failed" if download else "download: true") in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("download", [False, True])
def test_missing_cifar10_is_explained(tmp_path: Path, no_network: None, download: bool) -> None:
    dm = CIFAR10DataModule(root=str(tmp_path), download=download)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
        dm.setup("fit")
    message = str(info.value)
    assert "CIFAR10" in message and str(tmp_path) in message
    assert str(tmp_path / "cifar-10-batches-py" / "batches.meta") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    if download:
        assert "URLError" in message


@pytest.mark.parametrize("keep_bytes", [0, 3, 16, 100])
def test_truncated_idx_file_is_explained(tmp_path: Path, keep_bytes: int) -> None:
    """Each cut fails differently inside torchvision (ValueError, AssertionError, RuntimeError)."""
    images = write_fake_mnist(tmp_path) / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:keep_bytes])
    dm = MNISTDataModule(root=str(tmp_path), download=False)
    with pytest.raises(DatasetNotFoundError, match="truncated or corrupt") as info:
        dm.setup("fit")
    assert str(tmp_path) in str(info.value)


def test_truncated_cifar_pickle_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ignore_cifar_md5(monkeypatch)
    batch = write_fake_cifar10(tmp_path) / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DatasetNotFoundError, match="truncated or corrupt"):
        CIFAR10DataModule(root=str(tmp_path), download=False).setup("fit")


def test_batch_larger_than_a_part_is_rejected(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path, n_train=40)
    dm = MNISTDataModule(root=str(tmp_path), batch_size=32, arch_fraction=0.25, download=False)
    with pytest.raises(ValueError, match=r"batch_size=32 .*weight part: 30 .*arch part: 10"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"arch_fraction": 0.0}, "arch_fraction"),
        ({"arch_fraction": 1.0}, "arch_fraction"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DigitsDataModule(**kwargs)


def test_unpaired_loader_trains_on_the_weight_part_only() -> None:
    """Retraining: plain (x, y) batches of the weight part; the arch part validates."""
    dm = DigitsDataModule(batch_size=16, arch_fraction=0.1, paired=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    x, y = next(iter(loader))
    assert x.shape == (16, 1, 8, 8) and y.shape == (16,)
    assert loader.dataset.indices == dm.weight_indices.tolist()
    assert dm.val_dataloader().dataset.indices == dm.arch_indices.tolist()


def test_unpaired_batch_may_exceed_the_validation_part(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path, n_train=40)
    kwargs = {"root": str(tmp_path), "batch_size": 16, "arch_fraction": 0.25, "download": False}
    MNISTDataModule(paired=False, **kwargs).setup("fit")  # arch part: 10 examples, validation only
    with pytest.raises(ValueError, match="batch_size=16"):
        MNISTDataModule(**kwargs).setup("fit")


def test_cutout_zeroes_one_clipped_square() -> None:
    torch.manual_seed(0)
    cut = Cutout(4)
    holes = [int((cut(torch.ones(3, 10, 10))[0] == 0).sum()) for _ in range(200)]
    assert max(holes) == 16 and min(holes) >= 4  # whole inside; a quarter at a corner centre
    assert len(set(holes)) > 2  # clipped at the borders
    image = cut(torch.ones(3, 10, 10))
    assert torch.equal(image[0] == 0, image[2] == 0)  # the same square in every channel
    with pytest.raises(ValueError, match="cutout"):
        DigitsDataModule(cutout=-1)


def test_cutout_applies_to_training_reads_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ignore_cifar_md5(monkeypatch)
    write_fake_cifar10(tmp_path)
    dm = CIFAR10DataModule(
        root=str(tmp_path), batch_size=8, download=False, augment=False, cutout=16, paired=False
    )
    dm.setup("fit")
    torch.manual_seed(0)
    train_view = dm.train_dataloader().dataset.dataset
    val_view = dm.val_dataloader().dataset.dataset
    assert all(int((train_view[0][0] == 0).all(0).sum()) >= 64 for _ in range(10))
    assert int((val_view[0][0] == 0).all(0).sum()) == 0
