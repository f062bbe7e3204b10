"""The command line end to end, in-process: configs, run directories, resume, W&B, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS

from hyperdarts.cli import main

SMALL = [
    "--model.init_args.init_channels",
    "4",
    "--data.init_args.batch_size",
    "16",
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
]


def fit(root: Path, *extra: str, config: str = "digits.yaml"):
    args = ["fit", "--config", str(CONFIGS / config), "--trainer.default_root_dir", str(root)]
    return main([*args, *SMALL, *extra])


def test_print_config_is_complete(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "cifar.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    model = config["model"]["init_args"]
    assert config["model"]["class_path"] == "hyperdarts.modules.HyperDARTSSearch"
    assert config["data"]["class_path"] == "hyperdarts.data.CIFAR10DataModule"
    assert (model["num_cells"], model["init_channels"], model["order"]) == (8, 16, 2)
    assert model["relaxation"] == "gumbel"
    for key in ("lambda_min", "lambda_max", "hypernet", "hessian", "arch_lr", "w_lr"):
        assert key in model
    assert config["data"]["init_args"]["batch_size"] == 64
    assert config["trainer"]["max_epochs"] == 50
    assert config["checkpoint"]["save_last"] is True
    # linked from the data module, so the user never repeats them
    assert "num_classes" not in model


@pytest.mark.parametrize(
    ("hypernet", "order", "relaxation"),
    [
        ("constant", 1, "softmax"),
        ("linear", 1, "softmax"),
        ("piecewise", 1, "softmax"),
        ("mlp", 1, "softmax"),
        ("piecewise", 2, "softmax"),
        ("linear", 2, "gumbel"),
    ],
)
def test_fit_fast_dev_run(tmp_path: Path, hypernet: str, order: int, relaxation: str) -> None:
    cli = fit(
        tmp_path / "runs",
        "--trainer.fast_dev_run",
        "1",
        "--model.init_args.hypernet",
        hypernet,
        "--model.init_args.order",
        str(order),
        "--model.init_args.relaxation",
        relaxation,
    )
    assert cli.trainer.global_step == 2  # one weight step and one architecture step
    assert cli.model.hparams.hypernet == hypernet and cli.model.hparams.order == order
    assert cli.model.hparams.num_channels == 1 and cli.model.hparams.image_size == 8
    assert Path(cli.trainer.default_root_dir).parent == tmp_path / "runs"


@pytest.mark.parametrize(
    ("baseline", "hypernet", "relaxation", "fixed"),
    [
        ("darts", "ConstantHypernetwork", "SoftmaxRelaxation", 0.0),
        ("darts_fixed_lambda", "ConstantHypernetwork", "SoftmaxRelaxation", 0.1),
        ("fair_darts", "PiecewiseLinearHypernetwork", "SigmoidRelaxation", None),
        ("drnas", "PiecewiseLinearHypernetwork", "DirichletRelaxation", None),
    ],
)
def test_baseline_configs_fit(
    tmp_path: Path, baseline: str, hypernet: str, relaxation: str, fixed: float | None
) -> None:
    """Each baseline is a config added to a search config; it runs through fit."""
    cli = fit(
        tmp_path / "runs",
        "--config",
        str(CONFIGS / "baselines" / f"{baseline}.yaml"),
        "--trainer.fast_dev_run",
        "1",
    )
    model = cli.model
    assert cli.trainer.global_step == 2  # an architecture step and a weight step
    assert model.hparams.init_channels == 4  # earlier arguments survive the second config
    assert type(model.hypernet).__name__ == hypernet
    assert type(model.relaxation).__name__ == relaxation
    assert model.sampler.fixed == (fixed is not None)
    if fixed is not None:
        assert model.sampler.sample(model.rng) == fixed


def test_runs_get_their_own_directories_and_resume(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    short = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"]
    first = fit(root, *short, "--trainer.max_epochs", "1")
    run_dir = Path(first.trainer.default_root_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    config_before = (run_dir / "config.yaml").read_text()
    assert yaml.safe_load(config_before)["model"]["init_args"]["init_channels"] == 4

    resumed = fit(root, *short, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert Path(resumed.trainer.default_root_dir) == run_dir
    assert resumed.trainer.current_epoch == 2
    assert resumed.trainer.global_step == 2 * 2 * 2  # epochs x batches x two optimizers
    assert (run_dir / "config.yaml").read_text() == config_before
    assert (run_dir / "config-2.yaml").is_file()

    derive = ["derive", "--config", str(CONFIGS / "digits.yaml"), "--ckpt_path"]
    derive += [str(run_dir / "checkpoints" / "last.ckpt"), "--one_shot", "false"]
    main([*derive, "--budget", "1G"])
    assert json.loads((run_dir / "genotype.json").read_text())["format"] == "hyperdarts.genotype"
    with pytest.raises(SystemExit) as exit_info:
        main([*derive, "--budget", "10"])
    assert exit_info.value.code == 2

    fresh = fit(root, *short, "--trainer.max_epochs", "1", "--run_name", "second")
    assert Path(fresh.trainer.default_root_dir) == root / "second"
    assert (run_dir / "config.yaml").read_text() == config_before


def test_resume_without_an_earlier_run_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        fit(tmp_path / "empty", "--ckpt_path", "last")
    assert "no earlier run" in str(exit_info.value.code)


def test_bad_config_value_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        fit(tmp_path / "runs", "--model.init_args.lambda_min", "0")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lambda_min" in err and "Traceback" not in err


def test_missing_dataset_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        fit(
            tmp_path / "runs",
            "--data.init_args.root",
            str(tmp_path / "nodata"),
            "--data.init_args.download",
            "false",
            config="mnist.yaml",
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "MNIST" in err and str(tmp_path / "nodata") in err and "Traceback" not in err


def test_wandb_without_api_key_logs_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import wandb

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    args = ["fit", "--config", str(CONFIGS / "digits.yaml")]
    args += ["--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.max_steps", "2"]
    args += ["--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false"]
    try:
        cli = main([*args, "--model.init_args.init_channels", "4"])
    finally:
        wandb.finish()
    assert "no W&B API key found, logging offline" in capsys.readouterr().err
    run_dir = Path(cli.trainer.default_root_dir)
    assert list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert list(run_dir.glob("wandb/offline-run-*/files/media/table/**/*.table.json"))
    assert (run_dir / "family.json").is_file() and (run_dir / "family.png").is_file()
