"""Non-finite steps are skipped, counted and stop the run when they persist; nothing non-finite is
ever saved; an interrupted write keeps the previous file."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import CONFIGS

import hyperdarts.io
from hyperdarts.checkpoints import CheckpointError, SafeCheckpointIO
from hyperdarts.cli import main
from hyperdarts.data import DigitsDataModule
from hyperdarts.family import FamilyError, FamilyMember, save_family, save_family_csv
from hyperdarts.modules import HyperDARTSSearch, RetrainModule
from hyperdarts.nonfinite import NonFiniteError
from hyperdarts.reports import plot_family
from hyperdarts.search_space.genotypes import save_genotype
from hyperdarts.search_space.published import DARTS_V1, DARTS_V2

SEARCH = dict(num_channels=1, image_size=8, num_classes=10, init_channels=4, num_cells=3)
SEARCH.update(num_nodes=2, primitives=["none", "skip_connect", "sep_conv_3x3"], lambda_max=10.0)
RETRAIN = dict(num_channels=1, image_size=8, init_channels=4, num_cells=3, drop_path_max=0.1)
NAN = float("nan")


class Poison(L.Callback):
    """Fills the inputs of the ``batches``-th batches of the run (0-based), or of every batch from
    ``start`` on, with NaN before the step sees them; ``keep`` copies the last checkpoint aside
    when the first poisoned batch starts (the last good one)."""

    def __init__(
        self, batches: list[int] | None = None, start: int | None = None, keep: str | None = None
    ) -> None:
        self.batches = set(batches or [])
        self.start = start
        self.keep = keep
        self.seen = 0

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, i: int) -> None:
        n, self.seen = self.seen, self.seen + 1
        if n in self.batches or (self.start is not None and n >= self.start):
            if self.keep and n == (self.start if self.start is not None else min(self.batches)):
                shutil.copy(trainer.checkpoint_callback.last_model_path, self.keep)
            for x in _inputs(batch):
                x.fill_(NAN)


def _inputs(batch: Any) -> list[torch.Tensor]:
    parts = batch.values() if isinstance(batch, dict) else [batch]
    return [part[0] for part in parts]


class Recorder(L.Callback):
    """The module's tensors and optimizer state before and after every batch, and the metrics."""

    def __init__(self) -> None:
        self.before: list[dict[str, Any]] = []
        self.after: list[dict[str, Any]] = []
        self.metrics: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, i: int) -> None:
        self.before.append(_state(trainer, module))

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        self.after.append(_state(trainer, module))
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def _state(trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
    optimizers = [copy.deepcopy(o.state_dict()) for o in trainer.optimizers]
    return {"module": copy.deepcopy(module.state_dict()), "optimizers": optimizers}


def _fit(module: L.LightningModule, paired: bool, callbacks: list[L.Callback], batches: int):
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    data = DigitsDataModule(batch_size=16, arch_fraction=0.5 if paired else 0.1, paired=paired)
    trainer.fit(module, data)
    return trainer


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_a_nan_batch_is_skipped_in_both_search_steps_and_changes_nothing() -> None:
    record = Recorder()
    with pytest.warns(UserWarning, match=r"skipped the (architecture|weight) step at λ=[\d.e-]+"):
        _fit(HyperDARTSSearch(**SEARCH), True, [record, Poison(batches=[1])], batches=3)
    poisoned, fine = 1, 2
    assert _same(record.before[poisoned], record.after[poisoned])  # weights, θ, BN, momentum, Adam
    assert not _same(record.before[fine]["module"], record.after[fine]["module"])
    assert record.metrics[0]["train/skipped_steps"] == 0
    assert record.metrics[poisoned]["train/skipped_steps"] == 2  # architecture and weight step
    assert 1e-3 <= record.metrics[poisoned]["train/skipped_lambda"] <= 10.0
    assert record.metrics[fine]["train/skipped_steps"] == 2  # counted, not repeated


def test_a_non_finite_gradient_is_skipped_in_retraining() -> None:
    class InfGradient(L.Callback):
        def on_before_optimizer_step(self, trainer: L.Trainer, module: Any, opt: Any) -> None:
            if trainer.global_step == 1:
                next(module.parameters()).grad.view(-1)[0] = float("inf")  # the loss is finite

    record = Recorder()
    with pytest.warns(UserWarning, match="skipped the step at global step 1"):
        _fit(RetrainModule("DARTS_V2", **RETRAIN), False, [record, InfGradient()], batches=3)
    assert _same(record.before[1], record.after[1])  # no update, no momentum, BN undone
    assert not _same(record.before[2]["module"], record.after[2]["module"])
    assert [m["train/skipped_steps"] for m in record.metrics] == [0, 1, 1]


@pytest.mark.filterwarnings("ignore:hyperdarts. skipped")
def test_consecutive_skips_stop_the_search() -> None:
    module = HyperDARTSSearch(**SEARCH, max_consecutive_skips=2)
    with pytest.raises(NonFiniteError, match="2 optimizer steps in a row had a non-finite"):
        _fit(module, True, [Poison(start=0)], batches=3)
    assert all(bool(torch.isfinite(t).all()) for t in module.state_dict().values())


@pytest.mark.filterwarnings("ignore:hyperdarts. skipped")
def test_retraining_stops_after_the_limit_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.ckpt"
    poison = {"class_path": "test_reliability.Poison", "init_args": {"start": 4, "keep": str(good)}}
    args = ["fit", "--config", str(CONFIGS / "digits_retrain.yaml"), "--run_name", "x"]
    args += [
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.callbacks",
        json.dumps([poison]),
    ]
    args += ["--model.init_args.init_channels", "4", "--model.init_args.num_cells", "3"]
    args += ["--model.init_args.max_consecutive_skips", "2", "--data.init_args.batch_size", "16"]
    args += ["--checkpoint.last_every_n_train_steps", "2", "--trainer.limit_val_batches", "0"]
    args += ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    last = tmp_path / "x" / "checkpoints" / "last.ckpt"
    err = capsys.readouterr().err
    assert "error: 2 optimizer steps in a row had a non-finite loss or gradient" in err
    assert f"The last good checkpoint is {last}" in err and "Traceback" not in err
    assert _digest(last) == _digest(good)  # not rewritten after the first bad batch
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 4
    assert all(bool(torch.isfinite(t).all()) for t in saved["state_dict"].values())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- nothing non-finite is written ----------------------------------------------------------------


def test_a_checkpoint_with_a_nan_is_refused_and_the_previous_one_kept(tmp_path: Path) -> None:
    io, path = SafeCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "optimizer_states": []}, path)
    before = path.read_bytes()
    bad = {"state_dict": {"w": torch.ones(2)}, "optimizer_states": [{"m": torch.tensor([NAN])}]}
    with pytest.raises(CheckpointError, match=r"non-finite values in optimizer_states\.0\.m"):
        io.save_checkpoint(bad, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.ckpt"]


def _members(complexity: float = 0.5) -> list[FamilyMember]:
    return [
        FamilyMember([0.01], DARTS_V2, params=2, flops=20, expected_complexity=complexity),
        FamilyMember([1.0], DARTS_V1, params=1, flops=10, expected_complexity=0.1),
    ]


def test_a_family_with_a_nan_is_refused_and_the_previous_file_kept(tmp_path: Path) -> None:
    path = save_family(_members(), tmp_path / "family.json", meta={})
    before = path.read_bytes()
    with pytest.raises(FamilyError, match="member #0 has a non-finite expected_complexity"):
        save_family(_members(complexity=math.inf), path, meta={})
    assert path.read_bytes() == before


# --- interrupted writes ---------------------------------------------------------------------------

WRITERS: dict[str, Callable[[Path, int], Any]] = {
    "family.json": lambda path, k: save_family(_members(0.1 * k), path, meta={}),
    "family.csv": lambda path, k: save_family_csv(_members(0.1 * k), path),
    "family.png": lambda path, k: plot_family(_members(0.1 * k)[: k + 1], path),
    "genotype.json": lambda path, k: save_genotype([DARTS_V1, DARTS_V2][k], path),
    "last.ckpt": lambda path, k: SafeCheckpointIO().save_checkpoint(
        {"state_dict": {"w": torch.full((3,), float(k))}}, path
    ),
}


@pytest.mark.parametrize("crash_in", ["fsync", "replace"])
@pytest.mark.parametrize("name", list(WRITERS))
def test_an_interrupted_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, crash_in: str
) -> None:
    """A crash after part of the new file was written (fsync) or before it replaced the old one
    (rename) leaves the old file whole and no temporary file behind."""
    path = tmp_path / name
    WRITERS[name](path, 0)
    before = path.read_bytes()

    def crash(*args: Any) -> None:
        raise OSError(f"simulated crash in {crash_in}")

    monkeypatch.setattr(hyperdarts.io.os, crash_in, crash)
    with pytest.raises(OSError, match="simulated crash"):
        WRITERS[name](path, 1)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [name]
    WRITERS[name](path, 1)  # and the next write succeeds
    assert path.read_bytes() != before
