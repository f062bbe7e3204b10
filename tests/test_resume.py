"""Exact resume: a run killed mid-epoch (SIGKILL) or stopped by a signal (SIGTERM, SIGUSR1) and
resumed with ``--ckpt_path last`` ends, tensor for tensor, where an uninterrupted run ends.

The interrupted run is a real ``python -m hyperdarts fit`` process. A callback (PauseAt) holds it
at a chosen step, so the test knows where it kills it: after a mid-epoch checkpoint, with a step
done since that the resumed run must redo. The uninterrupted and the resumed runs run in-process.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import CONFIGS, REPO
from lightning.pytorch.utilities import CombinedLoader

from hyperdarts.cli import INTERRUPTED, main
from hyperdarts.data import DigitsDataModule

QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
QUIET += ["--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0"]
COMMON = ["--data.init_args.batch_size", "16", "--trainer.deterministic", "true", *QUIET]
COMMON += ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "5"]
COMMON += ["--trainer.limit_val_batches", "2", "--trainer.check_val_every_n_epoch", "1"]
# A search step is two optimizer steps: 10 per epoch; last.ckpt at steps 4, 8, 10 (epoch end), 12…
SEARCH = ["--config", str(CONFIGS / "digits.yaml"), "--checkpoint.last_every_n_train_steps", "4"]
SEARCH += ["--model.init_args.init_channels", "4", "--model.init_args.num_nodes", "2"]
SEARCH += ["--model.init_args.primitives", "[none, skip_connect, sep_conv_3x3]"]
SEARCH += ["--model.init_args.val_lambdas", "1", "--model.init_args.relaxation", "gumbel"]
# Retraining: 5 steps per epoch, last.ckpt at steps 2, 4, 5 (epoch end), 6, 8, 10.
RETRAIN = ["--config", str(CONFIGS / "digits_retrain.yaml")]
RETRAIN += ["--checkpoint.last_every_n_train_steps", "2", "--model.init_args.init_channels", "4"]
RETRAIN += ["--model.init_args.num_cells", "3", "--data.init_args.cutout", "3"]
RUNS = {"search": SEARCH, "retrain": RETRAIN}
COMPARED = ("state_dict", "optimizer_states", "lr_schedulers", "hyperdarts", "global_step", "epoch")


class PauseAt(L.Callback):
    """At the end of the batch that reaches global step ``step``, write ``marker`` and wait for a
    signal (at most ``timeout`` seconds): the test kills or signals the process there."""

    def __init__(self, step: int, marker: str, timeout: float = 120.0) -> None:
        self.step, self.marker, self.timeout = step, marker, timeout

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step != self.step:
            return
        Path(self.marker).write_text(str(os.getpid()))
        deadline = time.monotonic() + self.timeout
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.02)


def start_paused(kind: str, root: Path, step: int) -> tuple[subprocess.Popen, Path]:
    """``python -m hyperdarts fit`` of run ``cut``, held at ``step``."""
    marker = root / f"paused-{kind}"
    pause = f'[{{"class_path": "test_resume.PauseAt", "init_args": {{"step": {step}, '
    pause += f'"marker": "{marker}"}}}}]'
    args = ["fit", *RUNS[kind], *COMMON, "--trainer.default_root_dir", str(root)]
    args += ["--run_name", "cut", "--trainer.callbacks", pause]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO)])
    with open(root / "stderr.txt", "w") as stderr:  # a file: a full pipe would block the run
        process = subprocess.Popen(
            [sys.executable, "-m", "hyperdarts", *args],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    return process, marker


def stderr_of(root: Path) -> str:
    return (root / "stderr.txt").read_text()


def wait_for(process: subprocess.Popen, marker: Path, limit: float = 240.0) -> None:
    deadline = time.monotonic() + limit
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before pausing:\n{stderr_of(marker.parent)[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the run did not reach its pause")
        time.sleep(0.05)


def fit(kind: str, root: Path, *extra: str) -> Path:
    """An in-process run of ``kind`` under ``root``; its final last.ckpt."""
    args = ["fit", *RUNS[kind], *COMMON, "--trainer.default_root_dir", str(root)]
    cli = main([*args, "--trainer.callbacks", "[]", *extra])
    return Path(cli.trainer.default_root_dir) / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Any]]:
    """The final checkpoint of an uninterrupted run of a kind, computed once, on first use (so
    while the first interrupted run of the kind runs)."""
    root = tmp_path_factory.mktemp("full")
    done: dict[str, dict[str, Any]] = {}

    def get(kind: str) -> dict[str, Any]:
        if kind not in done:
            done[kind] = load(fit(kind, root / kind, "--run_name", "full"))
        return done[kind]

    return get


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal, tensor by tensor (torch.equal: same shape, same values, bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where} keys differ"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where} lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_resumed_exactly(kind: str, root: Path, full: dict[str, Any]) -> None:
    resumed = load(fit(kind, root, "--run_name", "cut", "--ckpt_path", "last"))
    assert resumed["global_step"] == full["global_step"] == (20 if kind == "search" else 10)
    for key in COMPARED:
        assert_same(full[key], resumed[key], key)


# name: (kind, global step at which the run is held, signal it gets there)
INTERRUPTED_RUNS = {
    "search-sigkill": ("search", 14, signal.SIGKILL),
    "retrain-sigkill": ("retrain", 7, signal.SIGKILL),
    "retrain-sigterm": ("retrain", 7, signal.SIGTERM),
    "retrain-sigusr1": ("retrain", 7, signal.SIGUSR1),
}


@pytest.fixture(scope="module")
def paused(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[subprocess.Popen, Path]]]:
    """Every interrupted run, started at once, so that their start-up (imports, data) overlaps
    with each other and with the in-process runs."""
    runs = {
        name: start_paused(kind, tmp_path_factory.mktemp(name), step)
        for name, (kind, step, _) in INTERRUPTED_RUNS.items()
    }
    yield runs
    for process, _ in runs.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(("name", "saved"), [("search-sigkill", 12), ("retrain-sigkill", 6)])
def test_sigkill_mid_epoch_then_resume_ends_exactly_as_an_uninterrupted_run(
    paused: dict, uninterrupted: Callable, name: str, saved: int
) -> None:
    kind = INTERRUPTED_RUNS[name][0]
    process, marker = paused[name]
    full = uninterrupted(kind)  # runs while the interrupted runs run
    wait_for(process, marker)
    checkpoint = load(marker.parent / "cut" / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == saved  # mid-epoch, a step before the kill
    assert checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 1
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert_resumed_exactly(kind, marker.parent, full)


@pytest.mark.parametrize("name", ["retrain-sigterm", "retrain-sigusr1"])
def test_a_termination_signal_saves_the_current_step_and_resume_is_exact(
    paused: dict, uninterrupted: Callable, name: str
) -> None:
    process, marker = paused[name]
    full = uninterrupted("retrain")
    wait_for(process, marker)
    process.send_signal(INTERRUPTED_RUNS[name][2])
    assert process.wait(timeout=60) == INTERRUPTED
    last = marker.parent / "cut" / "checkpoints" / "last.ckpt"
    message = f"stopped by a signal, state saved to {last}; resume with --ckpt_path last"
    assert message in stderr_of(marker.parent)
    assert load(last)["global_step"] == 7
    assert_resumed_exactly("retrain", marker.parent, full)


def test_training_batches_resume_mid_epoch_whatever_the_global_rng() -> None:
    """The data's part of exact resume, without a Trainer: loaders told "epoch 1, 2 batches taken"
    yield what uninterrupted loaders yield from there on, random augmentation (cutout) included,
    whatever consumed the global RNG in between."""

    def loaders() -> CombinedLoader:
        data = DigitsDataModule(batch_size=16, cutout=3)
        data.setup("fit")
        return data.train_dataloader()

    uninterrupted = loaders()
    for loader in uninterrupted.flattened:
        loader.sampler.set_epoch(1)
    expected = [batch for batch, _, _ in itertools.islice(uninterrupted, 5)][2:]
    resumed = loaders()
    torch.manual_seed(12345)
    for loader in resumed.flattened:
        loader.load_state_dict({"epoch": 1, "batches": 2})
    assert_same(expected, [batch for batch, _, _ in itertools.islice(resumed, 3)])
    for loader in resumed.flattened:
        loader.sampler.set_epoch(2)
    assert not torch.equal(next(iter(resumed))[0]["weight"][1], expected[0]["weight"][1])
