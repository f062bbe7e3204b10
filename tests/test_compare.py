"""The comparison command end to end on a tiny configuration, its resume, and its bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import CONFIGS

import hyperdarts.compare as compare
from hyperdarts.family import EvalSpec, load_family
from hyperdarts.pareto import hypervolume
from hyperdarts.search_space.evaluation import count_eval_parameters

TINY_SEARCH = [
    "--model.init_args.init_channels", "4",
    "--data.init_args.batch_size", "32",
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "2",
    "--trainer.logger", "false",
    "--trainer.enable_progress_bar", "false",
]  # fmt: skip
TINY_RETRAIN = [
    "--model.init_args.init_channels", "4",
    "--model.init_args.num_cells", "3",
    "--data.init_args.batch_size", "32",
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "2",
    "--trainer.limit_test_batches", "2",
    "--trainer.logger", "false",
    "--trainer.enable_progress_bar", "false",
]  # fmt: skip


def tiny_args(out: Path, *extra: str) -> list[str]:
    return [
        "--config", str(CONFIGS / "compare_digits.yaml"),
        "--out", str(out),
        "--search_config", str(CONFIGS / "digits.yaml"),
        "--retrain_config", str(CONFIGS / "digits_retrain.yaml"),
        "--baselines", str(CONFIGS / "baselines"),
        "--lambdas", "[0.01, 1.0]",
        "--seeds", "[0]",
        "--search_args", json.dumps(TINY_SEARCH),
        "--retrain_args", json.dumps(TINY_RETRAIN),
        "--random_tolerance", "0.1",
        *extra,
    ]  # fmt: skip


def test_compare_end_to_end_and_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # W&B offline, not disabled: the comparison's run is written locally and checked below.
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "cmp"
    path = compare.main(tiny_args(out))
    data = json.loads(path.read_text())
    assert data["format"] == "hyperdarts.compare" and data["version"] == 1
    methods = {m["method"]: m for m in data["methods"]}
    assert list(methods) == ["hyperdarts", "darts_fixed_lambda", "random"]

    # Search cost is measured: one search, one per λ, none for random draws.
    assert [methods[m]["search"]["searches"] for m in methods] == [1, 2, 0]
    for m in ("hyperdarts", "darts_fixed_lambda"):
        assert methods[m]["search"]["wall_s"] > 0 and methods[m]["search"]["cpu_s"] > 0

    # Fixed-λ DARTS: one member per λ, each from its own search with that λ.
    fixed = methods["darts_fixed_lambda"]["members"]
    assert [m["lambdas"] for m in fixed] == [[0.01], [1.0]]
    assert {m["seeds"] == [0] for m in fixed} == {True}

    # Random architectures: one per hyperdarts member, same parameter count within tolerance,
    # counted independently here at the size the family was costed at.
    family, meta = load_family(out / "hyperdarts" / "family.json")
    randoms, _ = load_family(out / "random" / "family.json")
    spec = EvalSpec(**meta["spec"])
    assert (spec.init_channels, spec.num_cells) == (4, 3)  # the retraining size, from its args
    assert len(randoms) == len(family) >= 1
    for target, drawn in zip(family, randoms):
        counted = count_eval_parameters(spec.build(drawn.genotype))
        assert counted == drawn.params
        assert abs(counted - target.params) <= 0.1 * target.params

    # Retrained parameters agree with the family's; accuracy is a fraction.
    for m in data["methods"]:
        for member in m["members"]:
            assert member["params"] == member["family_params"]
            assert 0.0 <= member["test_acc_mean"] <= 1.0

    # The hypervolume, recomputed from the members against the recorded reference.
    ref = (data["reference"]["params"], data["reference"]["accuracy"])
    largest = max(mm["params"] for m in data["methods"] for mm in m["members"])
    assert ref[0] == pytest.approx(1.1 * largest)
    for m in data["methods"]:
        points = [(mm["params"], mm["test_acc_mean"]) for mm in m["members"]]
        assert m["hypervolume"] == pytest.approx(hypervolume(points, ref))
    assert data["machine"]["cpus"] >= 1 and data["config"]["seeds"] == [0]

    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert len(rows) == sum(len(m["members"]) for m in data["methods"])
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (wandb_run,) = (out / "wandb").glob("offline-run-*")
    assert list(wandb_run.glob("files/media/table/compare/*.table.json"))
    assert list(wandb_run.glob("files/media/images/compare/*.png"))

    # A rerun reuses every finished search and retraining run: nothing is trained again.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare, "cli_main", no_training)
    monkeypatch.setattr("hyperdarts.frontier.retrain", no_training)
    again = json.loads(compare.main(tiny_args(out)).read_text())
    assert again["methods"] == data["methods"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "[hyperdarts, evolution]"], "methods: ['evolution']"),
        (["--methods", "[random]"], "random is matched to hyperdarts"),
        (["--lambdas", "[-1.0]"], "lambdas: [-1.0]"),
        (["--search_config", "nowhere.yaml"], "search_config: nowhere.yaml does not exist"),
        (["--baselines", "nowhere"], "baselines: nowhere"),
    ],
)
def test_bad_comparison_config_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        compare.main([*tiny_args(tmp_path / "cmp"), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "cmp").exists()  # nothing was run


@pytest.mark.parametrize("name", ["compare_digits.yaml", "compare_cifar.yaml"])
def test_shipped_comparison_configs_are_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped configs parse, name known methods and existing files (from the repo root)."""
    monkeypatch.chdir(CONFIGS.parent)
    args = compare.build_parser().parse_args(["--config", str(CONFIGS / name)])
    cfg = compare.CompareConfig(**{k: args[k] for k in compare.CompareConfig.__dataclass_fields__})
    compare._check(cfg)
    assert len(cfg.seeds) >= 3 and len(cfg.lambdas) >= 2
    assert {"hyperdarts", "darts_fixed_lambda", "random"} <= set(cfg.methods)
