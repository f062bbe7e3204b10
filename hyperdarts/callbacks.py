"""Lightning callbacks: the architecture family, derived and reported when the search ends."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from hyperdarts.errors import ConfigError
from hyperdarts.family import (
    MEMBER_FIELDS,
    EvalSpec,
    FamilyMember,
    derive_family,
    family_meta,
    genotype_string,
)
from hyperdarts.modules.search import HyperDARTSSearch
from hyperdarts.relaxation import LambdaSampler
from hyperdarts.reports import (
    FamilyFiles,
    describe_files,
    format_family_table,
    write_family_report,
)

WANDB_COLUMNS = [f for f in MEMBER_FIELDS if f != "lambdas"]


class FamilyCallback(L.Callback):
    """At the end of the search, derive the family over ``num_lambdas`` log-spaced λ and report it.

    Writes family.json, family.csv, family.png and cells/*.png into the run directory
    (``trainer.default_root_dir``), prints the table, and logs table, scatter plot and pictures to
    every WandbLogger. The grid is checked when fit starts, so a bad range fails before the search,
    not after it.

    Args:
        num_lambdas: size of the λ grid.
        lambda_min, lambda_max: the grid's range (default: the range the search was trained on).
        eval_init_channels, eval_num_cells: the retraining width and depth at which parameters and
            FLOPs are counted (DARTS: 36, 20).
        one_shot: measure each member's one-shot accuracy on the data module's validation split.
    """

    def __init__(
        self,
        num_lambdas: int = 9,
        lambda_min: float | None = None,
        lambda_max: float | None = None,
        eval_init_channels: int = 36,
        eval_num_cells: int = 20,
        one_shot: bool = True,
    ) -> None:
        if num_lambdas < 1:
            raise ConfigError(f"num_lambdas={num_lambdas}: need at least 1")
        self.num_lambdas = num_lambdas
        self.lambda_min = lambda_min
        self.lambda_max = lambda_max
        self.eval_init_channels = eval_init_channels
        self.eval_num_cells = eval_num_cells
        self.one_shot = one_shot
        self.lambdas: list[float] = []
        self.members: list[FamilyMember] = []
        self.outputs: FamilyFiles | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, HyperDARTSSearch):
            raise TypeError(
                f"FamilyCallback needs a HyperDARTSSearch model, got {type(pl_module).__name__}"
            )
        hp = pl_module.hparams
        low = hp.lambda_min if self.lambda_min is None else self.lambda_min
        high = hp.lambda_max if self.lambda_max is None else self.lambda_max
        self.lambdas = LambdaSampler(low, high).grid(self.num_lambdas)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        spec = EvalSpec.for_module(pl_module, self.eval_init_channels, self.eval_num_cells)
        loader, max_batches = self._one_shot_data(trainer)
        self.members = derive_family(pl_module, self.lambdas, spec, loader, max_batches)
        checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", None) or None
        meta = family_meta(pl_module, spec, checkpoint)
        self.outputs = write_family_report(self.members, Path(trainer.default_root_dir), meta)
        print(f"\nhyperdarts: architecture family\n{format_family_table(self.members)}")
        print(describe_files(self.outputs))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                log_family(logger, self.members, self.outputs)

    def _one_shot_data(self, trainer: L.Trainer) -> tuple[Any, int | None]:
        """The validation loader and how many of its batches the search validated on
        (``limit_val_batches``, ``fast_dev_run``); no loader when there is nothing to measure."""
        if not self.one_shot:
            return None, None
        if trainer.datamodule is None:
            print("hyperdarts: fit ran without a data module: no one-shot accuracies")
            return None, None
        counts = trainer.num_val_batches
        limit = counts[0] if counts else math.inf
        if limit == 0:
            print("hyperdarts: validation was disabled: no one-shot accuracies")
            return None, None
        return trainer.datamodule.val_dataloader(), None if math.isinf(limit) else int(limit)


def log_family(logger: WandbLogger, members: list[FamilyMember], files: FamilyFiles) -> None:
    """The family as a W&B table, a params-vs-accuracy scatter plot and the pictures."""
    import wandb  # only where W&B is used: importing it is slow

    table = wandb.Table(columns=WANDB_COLUMNS, data=[_row(m) for m in members])
    measured = all(m.one_shot_accuracy is not None for m in members)
    y = "one_shot_accuracy" if measured else "lambda"
    scatter = wandb.plot.scatter(table, "params", y, title=f"Architecture family: params vs {y}")
    logger.experiment.log({"family/table": table, "family/params_vs_" + y: scatter})
    logger.log_image("family/plot", [str(files.plot)])
    captions = [p.stem for p in files.cells]
    logger.log_image("family/cells", [str(p) for p in files.cells], caption=captions)


def _row(member: FamilyMember) -> list[Any]:
    return [
        member.lam,
        member.params,
        member.flops,
        member.expected_complexity,
        member.one_shot_accuracy,
        genotype_string(member.genotype),
    ]
