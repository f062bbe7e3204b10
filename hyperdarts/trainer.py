"""The Trainer of the hyperdarts CLI: Lightning's, plus the ``derive`` subcommand.

``derive`` reads a finished search's checkpoint and turns its hypernetwork into architectures: the
family over a λ grid, or the largest architecture within a parameter budget. Nothing is trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from hyperdarts.callbacks import FamilyCallback
from hyperdarts.checkpoints import CheckpointError, check_compatible, read_checkpoint
from hyperdarts.errors import ConfigError
from hyperdarts.family import (
    EvalSpec,
    derive_family,
    family_meta,
    one_shot_accuracy,
    parse_budget,
    query_budget,
)
from hyperdarts.modules.search import HyperDARTSSearch
from hyperdarts.reports import describe_files, format_family_table, write_family_report
from hyperdarts.search_space.genotypes import save_genotype


class HyperDARTSTrainer(L.Trainer):
    """Lightning's Trainer with the ``derive`` subcommand."""

    # LightningCLI shows only the docstring's first line as the subcommand's help: one long line.
    def derive(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        budget: str | None = None,
        lambdas: list[float] | None = None,
        num: int = 9,
        out: str | None = None,
        one_shot: bool = True,
        eval_init_channels: int | None = None,
        eval_num_cells: int | None = None,
    ) -> None:
        """Derive the architecture family (or the largest architecture within --budget) from a trained search checkpoint.

        Args:
            model: the search module, configured as for the search (same search space).
            datamodule: its data; the validation split gives the one-shot accuracies.
            ckpt_path: the search's checkpoint, e.g. runs/digits/<run>/checkpoints/last.ckpt.
            budget: a parameter budget (e.g. 800k, 1.5M): write the largest architecture that
                fits as genotype.json instead of the family.
            lambdas: λ values of the family (default: ``num`` log-spaced over the searched range).
            num: size of the default λ grid.
            out: output directory (default: the checkpoint's run directory).
            one_shot: measure one-shot accuracy (supernet with one-hot mixing weights).
            eval_init_channels: retraining width at which parameters and FLOPs are counted
                (default: the config's FamilyCallback's, else DARTS's 36).
            eval_num_cells: retraining depth at which parameters and FLOPs are counted
                (default: the config's FamilyCallback's, else DARTS's 20).
        """  # noqa: E501
        path = load_search_checkpoint(model, ckpt_path)
        limit = None if budget is None else parse_budget(budget)
        grid = family_lambdas(model, lambdas, num) if limit is None else []
        model.to(self.strategy.root_device)
        channels, cells = self._eval_size(eval_init_channels, eval_num_cells)
        spec = EvalSpec.for_module(model, channels, cells)
        out_dir = Path(out) if out is not None else run_directory(path)
        loader = validation_loader(datamodule) if one_shot else None
        if limit is not None:
            write_budget_member(model, limit, spec, loader, out_dir)
        else:
            write_family(model, grid, spec, loader, out_dir, path)

    def _eval_size(self, channels: int | None, cells: int | None) -> tuple[int, int]:
        """The retraining size to count at: explicit, else the end-of-search family's, so that
        ``derive`` and the family written by ``fit`` agree."""
        family = next((cb for cb in self.callbacks if isinstance(cb, FamilyCallback)), None)
        default = (family.eval_init_channels, family.eval_num_cells) if family else (36, 20)
        return channels or default[0], cells or default[1]


def write_budget_member(
    model: HyperDARTSSearch, budget: int, spec: EvalSpec, loader: Any, out_dir: Path
) -> None:
    """The largest architecture within ``budget`` → ``out_dir``/genotype.json, ready to retrain."""
    member = query_budget(model, budget, spec)
    if loader is not None:
        member.one_shot_accuracy = one_shot_accuracy(model, member.genotype, loader)
    saved = save_genotype(member.genotype, out_dir / "genotype.json")
    print(f"hyperdarts: the largest architecture within {budget:,} parameters")
    print(format_family_table([member]))
    print(f"  {saved.resolve()}")


def write_family(
    model: HyperDARTSSearch,
    lambdas: list[float],
    spec: EvalSpec,
    loader: Any,
    out_dir: Path,
    checkpoint: Path,
) -> None:
    members = derive_family(model, lambdas, spec, loader)
    files = write_family_report(members, out_dir, family_meta(model, spec, checkpoint))
    print(f"hyperdarts: architecture family of {checkpoint}\n{format_family_table(members)}")
    print(describe_files(files))


def load_search_checkpoint(model: L.LightningModule, ckpt_path: str | None) -> Path:
    """Load a search checkpoint into ``model`` after checking that it is one of the same space."""
    if not isinstance(model, HyperDARTSSearch):
        raise CheckpointError(f"derive needs a HyperDARTSSearch model, got {type(model).__name__}")
    if ckpt_path is None:
        raise CheckpointError(
            "derive needs --ckpt_path: the checkpoint of a finished search, e.g. "
            "runs/digits/<run>/checkpoints/last.ckpt"
        )
    path = Path(ckpt_path)
    checkpoint = read_checkpoint(path)
    check_compatible(model, checkpoint, path)
    model.load_state_dict(checkpoint["state_dict"])
    model.on_load_checkpoint(checkpoint)
    return path


def run_directory(ckpt: Path) -> Path:
    """The run directory of a checkpoint: <run>/checkpoints/x.ckpt → <run>."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def validation_loader(datamodule: L.LightningDataModule | None) -> DataLoader:
    if datamodule is None:
        raise ConfigError(
            "one-shot accuracy needs a data module (--data); or pass --one_shot false"
        )
    datamodule.prepare_data()
    datamodule.setup("validate")
    return datamodule.val_dataloader()


def family_lambdas(model: HyperDARTSSearch, lambdas: list[float] | None, num: int) -> list[float]:
    """The explicit λ values (checked to lie in the searched range), or ``num`` log-spaced."""
    if not lambdas:
        return model.sampler.grid(num)
    low, high = model.hparams.lambda_min, model.hparams.lambda_max
    slack = 1e-9  # λ values printed and pasted back may be off in the last digits
    outside = [lam for lam in lambdas if not low * (1 - slack) <= lam <= high * (1 + slack)]
    if outside:
        raise ConfigError(
            f"--lambdas {outside}: outside the searched range [{low:g}, {high:g}]; the "
            "hypernetwork was trained only there"
        )
    return sorted(lambdas)
