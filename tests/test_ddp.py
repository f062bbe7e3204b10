"""Two-process DDP on CPU (gloo), checked against single-process computations.

The claims (docs/multi_gpu.md): every rank samples the same λ and noise, DDP averages the weight
gradients, the search averages the architecture gradient explicitly, so after every step θ and w
are bitwise identical on all ranks and θ's gradient is the mean of what one process computes on
each rank's shard. The in-process runs fork their ranks (``ddp_fork``: plain ``ddp`` would
re-execute pytest); one real ``python -m hyperdarts fit --trainer.strategy ddp`` runs as a
subprocess to check the launcher, the shared run directory and that only rank zero writes.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import CONFIGS, REPO
from lightning.pytorch.strategies import DDPStrategy

from hyperdarts.cli import main
from hyperdarts.data import DigitsDataModule
from hyperdarts.modules import HyperDARTSSearch, RetrainModule

SEARCH = {"num_channels": 1, "image_size": 8, "num_classes": 10, "init_channels": 4}
SEARCH |= {"num_cells": 3, "val_lambdas": 1}
RETRAIN = {"num_channels": 1, "image_size": 8, "num_classes": 10, "init_channels": 4}
RETRAIN |= {"num_cells": 3}
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _rendezvous(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh port per test: a fixed one collides with concurrent runs on a shared machine."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))


def _trainer(find_unused_parameters: bool, callback: L.Callback, **kwargs: Any) -> L.Trainer:
    strategy = DDPStrategy(
        process_group_backend="gloo",
        find_unused_parameters=find_unused_parameters,
        start_method="fork",
        timeout=timedelta(seconds=60),
    )
    return L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=1,
        limit_train_batches=STEPS,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        **kwargs,
    )


def _clone(tree: Any) -> Any:
    return copy.deepcopy(tree)  # tensors, dicts, tuples: a snapshot the step cannot change


class Recorder(L.Callback):
    """Each rank's view of every step, saved to ``<out>/rank<r>.pt`` when training ends: the batch
    and the state before the step, each gradient right before its optimizer steps (the hook fires
    inside ``opt.step()`` in manual optimization too), and the final state and checkpoint."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.steps: list[dict[str, Any]] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = {"batch": _clone(batch), "state": _clone(pl_module.state_dict())}
        step["optimizers"] = [_clone(opt.state_dict()) for opt in trainer.optimizers]
        if isinstance(pl_module, HyperDARTSSearch):
            step |= {"rng": pl_module.rng.get_state(), "tau": pl_module.tau}
        self.steps.append(step)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        index = trainer.optimizers.index(optimizer)
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if id(p) in stepped}
        self.steps[-1][f"grads{index}"] = grads

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {"steps": self.steps, "final": _clone(pl_module.state_dict())}
        # what a checkpoint written now by this rank would hold
        record["checkpoint"] = trainer._checkpoint_connector.dump_checkpoint()
        torch.save(record, self.out / f"rank{trainer.global_rank}.pt")


def _load_ranks(out: Path) -> list[dict[str, Any]]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _assert_identical(a: Any, b: Any, where: str = "") -> None:
    """Bitwise equality of nested checkpoint-like structures."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), f"{where} differs across ranks"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _single_process_arch_grad(
    kwargs: dict[str, Any], step: dict[str, Any], batch: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """θ's gradient one process computes on ``batch`` from the state recorded before the step."""
    model = HyperDARTSSearch(**kwargs)
    model.load_state_dict(step["state"])
    model.rng.set_state(step["rng"])
    model.tau = step["tau"]
    hp = model.hparams
    opt_w = torch.optim.SGD(
        model.net.parameters(), hp.w_lr, momentum=hp.w_momentum, weight_decay=hp.w_weight_decay
    )
    opt_w.load_state_dict(step["optimizers"][0])  # lr and momentum buffers of the virtual step
    lam = model.sampler.sample(model.rng)
    surrogate, _, _ = model.architecture_objective(batch, lam, opt_w)
    names = [f"hypernet.{n}" for n, _ in model.hypernet.named_parameters()]
    grads = torch.autograd.grad(surrogate, list(model.hypernet.parameters()))
    return dict(zip(names, grads))


# Tracing costs per op: a small cell keeps the compiled case fast.
COMPILED = {"compile": True, "compile_backend": "aot_eager", "num_nodes": 2}
COMPILED |= {"primitives": ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]}


@pytest.mark.parametrize(
    ("order", "relaxation", "find_unused_parameters", "extra"),
    [(1, "softmax", True, {}), (2, "gumbel", False, {}), (2, "softmax", False, COMPILED)],
    ids=["first-order-find-unused", "second-order-gumbel-ddp", "second-order-compiled"],
)
def test_search_ranks_stay_identical_and_average_their_shards(
    tmp_path: Path, order: int, relaxation: str, find_unused_parameters: bool, extra: dict
) -> None:
    kwargs = {**SEARCH, "order": order, "relaxation": relaxation, "hypernet": "linear", **extra}
    L.seed_everything(0)
    recorder = Recorder(tmp_path)
    trainer = _trainer(find_unused_parameters, recorder)
    trainer.fit(HyperDARTSSearch(**kwargs), DigitsDataModule(batch_size=8, num_workers=0))
    ranks = _load_ranks(tmp_path)

    _assert_identical(ranks[0]["final"], ranks[1]["final"], "final state")
    _assert_identical(ranks[0]["checkpoint"], ranks[1]["checkpoint"], "checkpoint")
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == STEPS
    for s, (step0, step1) in enumerate(zip(ranks[0]["steps"], ranks[1]["steps"])):
        _assert_identical(step0["state"], step1["state"], f"step {s} state")
        _assert_identical(step0["optimizers"], step1["optimizers"], f"step {s} optimizers")
        _assert_identical(step0["rng"], step1["rng"], f"step {s} rng")  # same λ and noise
        _assert_identical(step0["grads1"], step1["grads1"], f"step {s} θ gradient")
        _assert_identical(step0["grads0"], step1["grads0"], f"step {s} w gradient")
        assert not torch.equal(step0["batch"]["arch"][0], step1["batch"]["arch"][0]), "one shard"
        shards = [_single_process_arch_grad(kwargs, step0, r["batch"]) for r in (step0, step1)]
        assert step0["grads1"].keys() == shards[0].keys()
        for name, ddp_grad in step0["grads1"].items():
            mean = (shards[0][name] + shards[1][name]) / 2
            torch.testing.assert_close(ddp_grad, mean, rtol=0, atol=0)
            assert not torch.allclose(shards[0][name], shards[1][name]), "shards must differ"


def test_retrain_weights_are_synchronized(tmp_path: Path) -> None:
    L.seed_everything(0)
    recorder = Recorder(tmp_path)
    module = RetrainModule("DARTS_V2", **RETRAIN)
    data = DigitsDataModule(batch_size=8, num_workers=0, paired=False, arch_fraction=0.1)
    _trainer(False, recorder, gradient_clip_val=5.0).fit(module, data)
    ranks = _load_ranks(tmp_path)

    _assert_identical(ranks[0]["final"], ranks[1]["final"], "final state")  # BN statistics too
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == STEPS
    _assert_identical(ranks[0]["checkpoint"], ranks[1]["checkpoint"], "checkpoint")
    for s, (step0, step1) in enumerate(zip(ranks[0]["steps"], ranks[1]["steps"])):
        _assert_identical(step0["grads0"], step1["grads0"], f"step {s} gradient")
        shards = [_single_process_retrain_grad(step0["state"], r["batch"]) for r in (step0, step1)]
        assert step0["grads0"].keys() == shards[0].keys()
        for name, ddp_grad in step0["grads0"].items():
            mean = (shards[0][name] + shards[1][name]) / 2
            torch.testing.assert_close(ddp_grad, mean, rtol=0, atol=0)


def _single_process_retrain_grad(
    state: dict[str, torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The training loss's gradient one process computes on ``batch`` (drop path is 0 in the
    first epoch, so the step is deterministic)."""
    module = RetrainModule("DARTS_V2", **RETRAIN).train()
    module.load_state_dict(state)
    x, y = batch
    logits, aux = module(x)
    loss = F.cross_entropy(logits, y) + module.hparams.auxiliary_weight * F.cross_entropy(aux, y)
    names = [n for n, _ in module.named_parameters()]
    return dict(zip(names, torch.autograd.grad(loss, list(module.parameters()))))


def test_cli_ddp_writes_once_from_rank_zero(tmp_path: Path) -> None:
    """A real ``--trainer.strategy ddp`` run: Lightning relaunches ``python -m hyperdarts`` for
    rank one, which must reuse rank zero's run directory and write nothing of its own."""
    root = tmp_path / "runs"
    args = ["fit", "--config", str(CONFIGS / "digits.yaml"), "--trainer.default_root_dir", root]
    args += ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
    args += ["--trainer.accelerator", "cpu", "--trainer.max_epochs", "1"]
    args += ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"]
    args += ["--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false"]
    args += ["--model.init_args.init_channels", "4", "--model.init_args.val_lambdas", "1"]
    args += ["--data.init_args.batch_size", "16"]
    env = {k: v for k, v in os.environ.items() if k != "HYPERDARTS_RUN_DIR"}
    env |= {"WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):  # not the user's home
        env[var] = str(tmp_path / "wandb-home")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "hyperdarts", *map(str, args)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr  # two processes really ran
    (run_dir,) = root.iterdir()  # rank one made no directory of its own
    assert sorted(p.name for p in run_dir.glob("config*.yaml")) == ["config.yaml"]
    assert (run_dir / "family.json").is_file() and (run_dir / "checkpoints/last.ckpt").is_file()
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 1
    assert done.stdout.count("hyperdarts: outputs in") == 1
    assert done.stdout.count("hyperdarts: architecture family") == 1


def test_cifar_ddp_config_is_the_single_gpu_search_split_over_devices() -> None:
    """The documented choice: same model and learning rates, same global batch, plain ``ddp``."""
    single, multi = (
        yaml.safe_load((CONFIGS / f).read_text()) for f in ("cifar.yaml", "cifar_ddp.yaml")
    )
    assert multi["model"] == single["model"]
    trainer = multi["trainer"]
    assert (trainer["strategy"], trainer["sync_batchnorm"]) == ("ddp", False)
    devices = trainer["devices"] * trainer["num_nodes"]
    per_device = multi["data"]["init_args"]["batch_size"]
    assert devices > 1 and devices * per_device == single["data"]["init_args"]["batch_size"]
    with pytest.raises(SystemExit) as exit_info:  # and the CLI accepts it
        main(["fit", "--config", str(CONFIGS / "cifar_ddp.yaml"), "--print_config"])
    assert exit_info.value.code == 0
