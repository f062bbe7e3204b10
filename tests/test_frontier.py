"""The frontier runner: every member retrained through the CLI, results kept, reruns skip them."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import CONFIGS

import hyperdarts.frontier as frontier_module
from hyperdarts.__main__ import run
from hyperdarts.family import FamilyMember, save_family
from hyperdarts.frontier import FORMAT, FrontierRow, RunResult, log_frontier, main, write_frontier
from hyperdarts.search_space.genotypes import Genotype
from hyperdarts.search_space.published import DARTS_V1, DARTS_V2

# one epoch of two batches, digits, 3 cells of 4 channels: about a second per run
TINY_RUN = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--model.init_args.init_channels=4",
    "--model.init_args.num_cells=3",
]


def write_family(path: Path) -> Path:
    members = [
        FamilyMember(lambdas=[0.001], genotype=DARTS_V2, params=2, flops=20, expected_complexity=1),
        FamilyMember(
            lambdas=[0.1, 1.0], genotype=DARTS_V1, params=1, flops=10, expected_complexity=0
        ),
    ]
    return save_family(members, path, meta={"spec": {"init_channels": 36, "num_cells": 20}})


@pytest.fixture
def fits(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The argument lists of the fits the frontier starts (print_config calls excluded)."""
    calls: list[list[str]] = []
    real = frontier_module.cli_main

    def counting(args: list[str]):
        if "--print_config" not in args:
            calls.append(args)
        return real(args)

    monkeypatch.setattr(frontier_module, "cli_main", counting)
    return calls


def frontier(family: Path, out: Path, *extra: str) -> None:
    config = str(CONFIGS / "digits_retrain.yaml")
    main(["--family", str(family), "--config", config, "--out", str(out), *extra, "--", *TINY_RUN])


def test_frontier_retrains_each_member_and_skips_finished_runs(
    tmp_path: Path, fits: list[list[str]]
) -> None:
    family = write_family(tmp_path / "family.json")
    out = tmp_path / "frontier"
    frontier(family, out)
    assert len(fits) == 2
    data = json.loads((out / "frontier.json").read_text())
    assert (data["format"], data["version"]) == (FORMAT, 1)
    rows = data["members"]
    assert [r["member"] for r in rows] == [0, 1] and [r["lambda"] for r in rows] == [0.001, 0.1]
    assert [Genotype.from_dict(r["genotype"]) for r in rows] == [DARTS_V2, DARTS_V1]
    assert [r["family_params"] for r in rows] == [2, 1]  # the family's counts, kept as they were
    assert rows[0]["params"] > rows[1]["params"] > 1000  # recounted on the retrained networks
    for r in rows:
        assert r["seeds"] == [0] and 0 <= r["test_acc_mean"] <= 1 and r["test_acc_std"] is None
        assert r["test_acc"] == [r["test_acc_mean"]]
    with open(out / "frontier.csv") as f:
        assert [row["member"] for row in csv.DictReader(f)] == ["0", "1"]
    assert (out / "frontier.png").stat().st_size > 0
    assert (out / "runs" / "member1-seed0" / "checkpoints" / "last.ckpt").is_file()

    results = sorted((out / "results").iterdir())
    stamps = [p.stat().st_mtime_ns for p in results]
    frontier(family, out)
    assert len(fits) == 2  # nothing retrained
    assert [p.stat().st_mtime_ns for p in results] == stamps

    frontier(family, out, "--member", "1", "--seeds", "0", "1")
    assert len(fits) == 3 and "member1-seed1" in fits[-1]
    rows = json.loads((out / "frontier.json").read_text())["members"]
    assert rows[1]["seeds"] == [0, 1] and rows[1]["test_acc_std"] is not None
    assert rows[0]["seeds"] == [0]


def test_interrupted_run_resumes_from_its_last_checkpoint(
    tmp_path: Path, fits: list[list[str]]
) -> None:
    family = write_family(tmp_path / "family.json")
    out = tmp_path / "frontier"
    frontier(family, out, "--member", "0")
    (out / "results" / "member0-seed0.json").unlink()  # as if cut short before the result
    frontier(family, out, "--member", "0")
    last = str(out / "runs" / "member0-seed0" / "checkpoints" / "last.ckpt")
    assert fits[-1][fits[-1].index("--ckpt_path") + 1] == last
    assert (out / "results" / "member0-seed0.json").is_file()


def test_results_of_another_family_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fits: list[list[str]]
) -> None:
    family = write_family(tmp_path / "family.json")
    out = tmp_path / "frontier"
    frontier(family, out, "--member", "1")
    record = out / "results" / "member1-seed0.json"
    data = json.loads(record.read_text())
    data["genotype"] = DARTS_V2.to_dict()
    record.write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exit_info:
        frontier(family, out, "--member", "1")
    assert exit_info.value.code == 2
    assert "another family; pass a new --out" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--member", "2"], "--member 2: .* has 2 members, 0 to 1"),
        (["--", "--checkpoint.monitor=null"], "tests each run's best checkpoint"),
        (["--", "--trainer.fast_dev_run=1"], "tests each run's best checkpoint"),
        (["--config", str(CONFIGS / "digits.yaml")], "the model is .*HyperDARTSSearch"),
    ],
)
def test_bad_requests_fail_before_training(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fits: list[list[str]],
    extra: list[str],
    message: str,
) -> None:
    family = write_family(tmp_path / "family.json")
    config = str(CONFIGS / "digits_retrain.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["--family", str(family), "--config", config, *extra])  # a later --config wins
    assert exit_info.value.code == 2 and not fits
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err)


def test_frontier_goes_to_wandb_as_table_and_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    member = FamilyMember(
        lambdas=[0.01], genotype=DARTS_V2, params=2, flops=20, expected_complexity=1
    )
    runs = tuple(
        RunResult(0, seed, DARTS_V2, 100, 1000, acc, acc, "best.ckpt")
        for seed, acc in ((0, 0.5), (1, 0.7))
    )
    rows = [FrontierRow(0, member, runs)]
    assert rows[0].mean == pytest.approx(0.6) and rows[0].std == pytest.approx(0.1414, abs=1e-4)
    log_frontier(rows, write_frontier(rows, tmp_path, {}), {"project": "test"}, tmp_path)
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run.glob("files/media/table/frontier/*.table.json"))
    assert list(run.glob("files/media/images/frontier/*.png"))


def test_module_entry_dispatches_frontier(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.argv", ["hyperdarts", "frontier", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 0
    assert "--seeds" in capsys.readouterr().out
