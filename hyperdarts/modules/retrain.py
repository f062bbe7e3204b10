"""Retraining: a discrete architecture trained from scratch by the DARTS evaluation protocol.

The architecture comes from one string, so a config, the command line and the frontier runner all
name it the same way: a genotype JSON file, a member of a search's family (``family.json#<index>``
or ``family.json@<λ>``), or a published cell (``DARTS_V2``). The recipe is DARTS's: SGD with a
cosine schedule, an auxiliary head after 2/3 of the cells, drop path rising linearly over the
epochs; validation on a held-out part of the training split picks the checkpoint to test. A step
whose loss or gradient is not finite is skipped (hyperdarts.nonfinite).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from hyperdarts.checkpoints import global_rng_states, restore_global_rng
from hyperdarts.complexity import count_flops
from hyperdarts.errors import ConfigError
from hyperdarts.family import FORMAT as FAMILY_FORMAT
from hyperdarts.family import EvalSpec, FamilyMember, genotype_string, load_family
from hyperdarts.nonfinite import StepGuard, buffer_snapshot, is_finite_step, restore_buffers
from hyperdarts.search_space.evaluation import count_eval_parameters
from hyperdarts.search_space.genotypes import Genotype, load_genotype
from hyperdarts.search_space.published import PUBLISHED, published_genotype

Batch = tuple[torch.Tensor, torch.Tensor]
SOURCE_FORMS = (
    "a genotype JSON file, path/to/family.json#<index>, path/to/family.json@<lambda> (the member "
    f"whose λ is nearest), or a published cell ({', '.join(PUBLISHED)})"
)
_SELECTOR = re.compile(r"(?P<path>.+)(?P<kind>[#@])(?P<key>[^#@/\\]+)")


class GenotypeSourceError(ConfigError):
    """A genotype source that names no architecture; the message lists what is available."""


# --- where the architecture comes from ------------------------------------------------------------


def resolve_genotype(source: str) -> Genotype:
    """The genotype ``source`` names: a file, a family member (``#index``, ``@λ``), a cell name."""
    source = source.strip()
    if Path(source).is_file():
        return _genotype_file(Path(source))
    selector = _SELECTOR.fullmatch(source)
    if selector and Path(selector["path"]).is_file():
        members, _ = load_family(selector["path"])
        if selector["kind"] == "#":
            return _member_at(members, selector["key"], selector["path"]).genotype
        return nearest_member(members, _positive(selector["key"], source)).genotype
    try:
        return published_genotype(source)
    except KeyError:
        missing = selector["path"] if selector else source
        raise GenotypeSourceError(
            f"genotype {source!r}: {missing!r} is neither an existing file nor a published cell; "
            f"give {SOURCE_FORMS}"
        ) from None


def _genotype_file(path: Path) -> Genotype:
    """A genotype file; a family file without a selector is refused with its members listed."""
    try:
        is_family = json.loads(path.read_text()).get("format") == FAMILY_FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        is_family = False  # load_genotype explains what is wrong with the file
    if is_family:
        raise GenotypeSourceError(
            f"genotype {str(path)!r} is a family file: pick a member with {path}#<index> or "
            f"{path}@<lambda>; its members:\n{describe_members(load_family(path)[0])}"
        )
    return load_genotype(path)


def _member_at(members: list[FamilyMember], key: str, path: str) -> FamilyMember:
    if key.isdigit() and int(key) < len(members):
        return members[int(key)]
    raise GenotypeSourceError(
        f"genotype {path}#{key}: no member {key!r}; the family has {len(members)} members, "
        f"#0 to #{len(members) - 1}:\n{describe_members(members)}"
    )


def _positive(text: str, source: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise GenotypeSourceError(f"genotype {source!r}: λ must be a positive number, got {text!r}")
    return value


def nearest_member(members: list[FamilyMember], lam: float) -> FamilyMember:
    """The member derived at the grid λ nearest to ``lam`` in log λ (the scale λ is searched on);
    ties go to the earlier (larger) member."""
    if not members:
        raise GenotypeSourceError("the family has no members")
    return min(members, key=lambda m: min(abs(math.log(x / lam)) for x in m.lambdas))


def describe_members(members: list[FamilyMember]) -> str:
    """One line per member: index, λ and parameter count, for error messages."""
    return "\n".join(
        f"  #{i}: λ={m.lam:.4g} ({', '.join(f'{x:.4g}' for x in m.lambdas)}), "
        f"{m.params:,} parameters"
        for i, m in enumerate(members)
    )


# --- the schedule ---------------------------------------------------------------------------------


def drop_path_schedule(epoch: int, max_epochs: int, max_prob: float) -> float:
    """Drop path probability of ``epoch``: 0 at the first epoch, rising linearly to ``max_prob``
    at the last (DARTS uses ``max_prob * epoch / epochs``, which stops one step short)."""
    return max_prob * min(epoch / max(max_epochs - 1, 1), 1.0)


# --- the module -----------------------------------------------------------------------------------


class RetrainModule(L.LightningModule):
    """A discrete architecture trained from scratch (DARTS evaluation protocol).

    Args:
        genotype: the architecture: a genotype JSON file, ``path/to/family.json#<index>``,
            ``path/to/family.json@<lambda>`` (the member whose λ is nearest), or a published
            cell by name (``DARTS_V2``, ``PC_DARTS``, … see ``hyperdarts.search_space.published``).
        num_channels, image_size, num_classes: linked from the data module by the CLI.
        init_channels, num_cells, stem_multiplier: the evaluation network (DARTS CIFAR-10: 36, 20).
        auxiliary_weight: weight of the auxiliary head's loss (0 builds no head).
        drop_path_max: drop path probability reached at the last epoch, from 0 at the first.
        lr, lr_min, momentum, weight_decay: SGD, cosine from ``lr`` to ``lr_min`` over max_epochs.
            Gradient clipping is the Trainer's (``gradient_clip_val``).
        max_consecutive_skips: stop after this many optimizer steps in a row were skipped for a
            non-finite loss or gradient.
    """

    def __init__(
        self,
        genotype: str,
        num_channels: int = 3,
        image_size: int = 32,
        num_classes: int = 10,
        init_channels: int = 36,
        num_cells: int = 20,
        stem_multiplier: int = 3,
        auxiliary_weight: float = 0.4,
        drop_path_max: float = 0.2,
        lr: float = 0.025,
        lr_min: float = 0.0,
        momentum: float = 0.9,
        weight_decay: float = 3e-4,
        max_consecutive_skips: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _validate(auxiliary_weight, drop_path_max, lr, lr_min, momentum, weight_decay)
        self.genotype = resolve_genotype(genotype)
        self.spec = EvalSpec(
            num_channels=num_channels,
            num_classes=num_classes,
            image_size=image_size,
            init_channels=init_channels,
            num_cells=num_cells,
            stem_multiplier=stem_multiplier,
        )
        self.net = self.spec.build(self.genotype, auxiliary=auxiliary_weight > 0)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self._costs: dict[str, int] | None = None
        self._costs_logged = False
        self.guard = StepGuard(max_consecutive_skips)
        self._step_loss: torch.Tensor | None = None
        self._step_buffers: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits, and the auxiliary logits in training (``None`` in eval mode)."""
        return self.net(x)

    def costs(self) -> dict[str, int]:
        """Exact parameters (auxiliary head excluded) and FLOPs at batch 1, counted as the family
        counts them; FLOPs on a CPU copy, so counting works wherever the network lives."""
        if self._costs is None:
            self._costs = {
                "params": count_eval_parameters(self.net),
                "flops": count_flops(self.spec.build(self.genotype), self.spec.input_shape),
            }
        return self._costs

    # --- steps ------------------------------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self._step_buffers = buffer_snapshot(self.net)
        logits, aux_logits = self(x)
        loss = F.cross_entropy(logits, y)
        if aux_logits is not None:
            loss = loss + self.hparams.auxiliary_weight * F.cross_entropy(aux_logits, y)
        self.train_acc(logits, y)
        metrics = {"train/loss": loss, "train/acc": self.train_acc}
        self.log_dict(metrics, on_step=True, on_epoch=True, batch_size=x.shape[0])
        self._step_loss = loss.detach()
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip a step whose loss or gradient is not finite: without gradients the optimizer
        changes nothing (no momentum, no weight decay); the forward's BatchNorm updates are
        undone. Lightning then clips and steps as usual."""
        assert self._step_loss is not None, "on_before_optimizer_step runs after training_step"
        params = list(self.parameters())
        finite = self.trainer.strategy.reduce_boolean_decision(
            is_finite_step(self._step_loss, params)
        )
        if not finite:
            restore_buffers(self.net, self._step_buffers)
            for p in params:
                p.grad = None
        last = getattr(self.trainer.checkpoint_callback, "last_model_path", None)
        self.guard.record(finite, f"step at global step {self.global_step}", last)
        self.log("train/skipped_steps", float(self.guard.total), on_step=True, on_epoch=False)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def _evaluate(self, batch: Batch, stage: str, accuracy: MulticlassAccuracy) -> None:
        x, y = batch
        logits, _ = self(x)
        accuracy(logits, y)
        metrics = {f"{stage}/loss": F.cross_entropy(logits, y), f"{stage}/acc": accuracy}
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val", batch_size=x.shape[0])

    # --- hooks ------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Log what is trained once per module (a test after fit logs nothing new): the
        genotype, its parameters and FLOPs."""
        if self._costs_logged:
            return
        for logger in self.loggers:
            logger.log_hyperparams({"genotype_resolved": genotype_string(self.genotype)})
            logger.log_metrics(dict(self.costs()), step=0)
        self._costs_logged = True

    def on_train_start(self) -> None:
        """A run resumed mid-epoch starts without on_train_epoch_start: set drop path here too."""
        self._set_drop_path()

    def on_train_epoch_start(self) -> None:
        prob = self._set_drop_path()
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log_dict({"train/drop_path_prob": prob, "train/lr": lr}, on_step=False, on_epoch=True)

    def _set_drop_path(self) -> float:
        epochs = self.trainer.max_epochs or 1
        prob = drop_path_schedule(self.current_epoch, epochs, self.hparams.drop_path_max)
        self.net.drop_path_prob = prob
        return prob

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.SGD(
            self.parameters(), hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
        )
        epochs = max(self.trainer.max_epochs or 1, 1)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=hp.lr_min)
        return [optimizer], [schedule]  # the schedule steps once per epoch

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the architecture itself (the source may later name another: a rewritten family),
        the global generators drop path draws from, and the skipped-step counters."""
        checkpoint["hyperdarts"] = {
            "genotype": self.genotype.to_dict(),
            "rng": global_rng_states(),
            "skips": self.guard.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint(checkpoint)
        state = checkpoint.get("hyperdarts", {})
        if "rng" in state:
            restore_global_rng(state["rng"])
        if "skips" in state:
            self.guard.load_state_dict(state["skips"])

    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint trained on another architecture than the one configured now."""
        saved = checkpoint.get("hyperdarts", {}).get("genotype")
        if saved is not None and Genotype.from_dict(saved, "checkpoint") != self.genotype:
            raise GenotypeSourceError(
                f"the checkpoint was trained on another architecture than genotype "
                f"{self.hparams.genotype!r} names now:\n  checkpoint: "
                f"{genotype_string(Genotype.from_dict(saved))}\n  genotype:   "
                f"{genotype_string(self.genotype)}\nConfigure the genotype the run was trained "
                "with (its run directory holds the config)."
            )


def _validate(
    auxiliary_weight: float,
    drop_path_max: float,
    lr: float,
    lr_min: float,
    momentum: float,
    weight_decay: float,
) -> None:
    checks = [
        (auxiliary_weight >= 0, f"auxiliary_weight={auxiliary_weight}: must be >= 0 (0: no head)"),
        (0 <= drop_path_max < 1, f"drop_path_max={drop_path_max}: must be in [0, 1)"),
        (lr > 0 and math.isfinite(lr), f"lr={lr}: must be a positive number"),
        (0 <= lr_min <= lr, f"lr_min={lr_min}: must be in [0, lr={lr}]"),
        (0 <= momentum < 1, f"momentum={momentum}: must be in [0, 1)"),
        (weight_decay >= 0, f"weight_decay={weight_decay}: must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
