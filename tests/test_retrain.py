"""Retraining: where the architecture comes from, the DARTS recipe, and fit/test through the CLI."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CONFIGS
from fake_datasets import ignore_cifar_md5, write_fake_cifar10

from hyperdarts.cli import main
from hyperdarts.data import DigitsDataModule
from hyperdarts.family import FamilyMember, save_family
from hyperdarts.modules.retrain import (
    GenotypeSourceError,
    RetrainModule,
    drop_path_schedule,
    resolve_genotype,
)
from hyperdarts.search_space.genotypes import GenotypeError, save_genotype
from hyperdarts.search_space.published import DARTS_V1, DARTS_V2, PC_DARTS

TINY = {"num_channels": 1, "image_size": 8, "init_channels": 4, "num_cells": 3}
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
QUIET += ["--trainer.enable_model_summary", "false"]


def write_family(path: Path) -> Path:
    """Three members, largest first, derived at λ grids {0.001, 0.002}, {0.01}, {0.1, 1.0}."""
    genotypes = [(PC_DARTS, [0.001, 0.002]), (DARTS_V2, [0.01]), (DARTS_V1, [0.1, 1.0])]
    members = [
        FamilyMember(lambdas=lams, genotype=g, params=3 - k, flops=30 - k, expected_complexity=0.5)
        for k, (g, lams) in enumerate(genotypes)
    ]
    return save_family(members, path, meta={})


def test_genotype_sources_resolve(tmp_path: Path) -> None:
    family = write_family(tmp_path / "family.json")
    assert resolve_genotype(str(save_genotype(DARTS_V1, tmp_path / "g.json"))) == DARTS_V1
    assert resolve_genotype(f"{family}#1") == DARTS_V2
    assert resolve_genotype(f"{family}#0") == PC_DARTS
    # nearest grid λ in log λ: 0.03 is nearer 0.01 than 0.1; 0.0015 lies between 0.001 and 0.002
    assert resolve_genotype(f"{family}@0.03") == DARTS_V2
    assert resolve_genotype(f"{family}@0.05") == DARTS_V1
    assert resolve_genotype(f"{family}@1e-5") == PC_DARTS
    assert resolve_genotype("DARTS_V2") == DARTS_V2
    assert resolve_genotype("pc-darts") == PC_DARTS


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{tmp}/absent.json", r"neither an existing file nor a published cell.*DARTS_V2"),
        ("ENAS", r"'ENAS' is neither .*published cell \(DARTS_V1, DARTS_V2"),
        ("{family}#3", r"no member '3'; the family has 3 members, #0 to #2:\n  #0: λ=0.001"),
        ("{family}#first", r"(?s)no member 'first'.*\n  #2: λ=0.1 \(0.1, 1\), 1 parameters"),
        ("{family}@-1", r"λ must be a positive number, got '-1'"),
        ("{family}@small", r"λ must be a positive number, got 'small'"),
        ("{family}", r"(?s)is a family file: pick a member with .*#<index>.*\n  #1: λ=0.01"),
        ("{tmp}/absent.json#0", r"'.*absent.json' is neither an existing file"),
    ],
)
def test_bad_genotype_sources_say_what_exists(tmp_path: Path, source: str, expected: str) -> None:
    family = write_family(tmp_path / "family.json")
    with pytest.raises(GenotypeSourceError, match=expected):
        resolve_genotype(source.format(tmp=tmp_path, family=family))


def test_broken_genotype_file_is_a_genotype_error(tmp_path: Path) -> None:
    (tmp_path / "g.json").write_text('{"normal": []}')
    with pytest.raises(GenotypeError, match="missing field"):
        resolve_genotype(str(tmp_path / "g.json"))


def test_aux_head_and_drop_path_act_only_in_training() -> None:
    torch.manual_seed(0)
    module = RetrainModule("DARTS_V2", drop_path_max=0.5, **TINY)
    module.net.drop_path_prob = 0.5
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        module.eval()
        (a, aux_a), (b, aux_b) = module(x), module(x)
        assert aux_a is None and aux_b is None and torch.equal(a, b)
        module.train()
        (c, aux_c), (d, _) = module(x), module(x)
    assert aux_c is not None and aux_c.shape == (8, 10)
    assert not torch.equal(c, d)  # batch statistics are the same: only drop path differs


def test_no_aux_head_when_its_weight_is_zero() -> None:
    module = RetrainModule("DARTS_V2", auxiliary_weight=0.0, **TINY).train()
    assert module.net.auxiliary_head is None and module(torch.randn(2, 1, 8, 8))[1] is None


def test_drop_path_rises_linearly_to_its_max() -> None:
    assert [drop_path_schedule(e, 5, 0.2) for e in range(5)] == pytest.approx(
        [0.0, 0.05, 0.1, 0.15, 0.2]
    )
    assert drop_path_schedule(0, 1, 0.2) == 0.0

    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            seen.append(module.net.drop_path_prob)

    module = RetrainModule("DARTS_V2", drop_path_max=0.3, **TINY)
    trainer = L.Trainer(
        max_epochs=4,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Probe()],
    )
    trainer.fit(module, DigitsDataModule(batch_size=8, arch_fraction=0.1, paired=False))
    assert seen == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_checkpoint_of_another_architecture_is_refused() -> None:
    module = RetrainModule("DARTS_V2", **TINY)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    module.on_load_checkpoint(checkpoint)  # the same architecture: accepted
    other = RetrainModule("DARTS_V1", **TINY)
    with pytest.raises(GenotypeSourceError, match="another architecture"):
        other.on_load_checkpoint(checkpoint)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"auxiliary_weight": -0.1}, "auxiliary_weight"),
        ({"drop_path_max": 1.0}, "drop_path_max"),
        ({"lr": 0.0}, "lr"),
        ({"lr_min": 1.0}, "lr_min"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_bad_recipe_values_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetrainModule("DARTS_V2", **TINY, **kwargs)


def test_fit_on_cifar_files_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ignore_cifar_md5(monkeypatch)
    write_fake_cifar10(tmp_path / "data")
    cli = main(
        [
            "fit",
            "--config",
            str(CONFIGS / "cifar_retrain.yaml"),
            "--trainer.default_root_dir",
            str(tmp_path / "runs"),
            "--trainer.fast_dev_run",
            "1",
            "--data.init_args.root",
            str(tmp_path / "data"),
            "--data.init_args.download",
            "false",
            "--data.init_args.batch_size",
            "4",
            "--data.init_args.num_workers",
            "0",
            "--model.init_args.init_channels",
            "4",
            "--model.init_args.num_cells",
            "3",
            *QUIET,
        ]
    )
    assert cli.model.genotype == DARTS_V2
    assert (cli.model.hparams.num_channels, cli.model.hparams.image_size) == (3, 32)
    assert cli.trainer.global_step == 1 and cli.trainer.gradient_clip_val == 5
    assert cli.datamodule.cutout == 16 and not cli.datamodule.paired
    assert cli.trainer.callback_metrics["val/acc"] >= 0


def test_fit_then_test_the_best_checkpoint(tmp_path: Path) -> None:
    """The documented workflow on digits: fit keeps the best epoch, test evaluates it."""
    short = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2"]
    short += ["--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]
    short += ["--model.init_args.init_channels", "4", "--model.init_args.num_cells", "3"]
    config = ["--config", str(CONFIGS / "digits_retrain.yaml")]
    root = ["--trainer.default_root_dir", str(tmp_path / "runs")]
    fitted = main(["fit", *config, *root, *short, *QUIET, "--run_name", "a"])
    best = fitted.trainer.checkpoint_callback.best_model_path
    assert Path(best).parent == tmp_path / "runs" / "a" / "checkpoints"
    assert fitted.model.costs()["params"] < sum(p.numel() for p in fitted.model.parameters())
    tested = main(["test", *config, *root, *short, *QUIET, "--ckpt_path", best])
    assert 0 <= tested.trainer.callback_metrics["test/acc"] <= 1


def test_unknown_genotype_is_one_clear_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", "--config", str(CONFIGS / "digits_retrain.yaml"), *QUIET]
    args += ["--trainer.default_root_dir", str(tmp_path), "--model.init_args.genotype", "ENAS"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "ENAS" in err and "DARTS_V2" in err and "family.json#<index>" in err
    assert "Traceback" not in err
