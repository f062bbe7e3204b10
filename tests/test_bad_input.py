"""Bad input, everywhere a user types something, through the command line: each fails before any
training with one line that names the field or file and the fix (exit status 2), and nothing
already written is overwritten.

Covered end to end elsewhere, so not repeated here: λ_min <= 0 and a missing dataset
(test_cli.py), an unknown published cell name (test_retrain.py), frontier requests
(test_frontier.py).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CONFIGS
from fake_datasets import write_fake_mnist

from hyperdarts.cli import main
from hyperdarts.search_space.published import DARTS_V2

QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
SEARCH = ["--config", str(CONFIGS / "digits.yaml"), "--model.init_args.init_channels", "4"]
SEARCH += ["--model.init_args.num_nodes", "2", "--data.init_args.batch_size", "16", *QUIET]
RETRAIN = ["--config", str(CONFIGS / "digits_retrain.yaml"), *QUIET]


@pytest.fixture(scope="module")
def search_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-step search's checkpoint (digits, 1x8x8)."""
    root = tmp_path_factory.mktemp("search")
    short = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"]
    main(["fit", *SEARCH, *short, "--trainer.default_root_dir", str(root), "--run_name", "done"])
    return root / "done" / "checkpoints" / "last.ckpt"


# --- files a case writes before it runs -----------------------------------------------------------

GENOTYPE = DARTS_V2.to_dict()


def _genotype(**changes: object) -> dict:
    return {**GENOTYPE, **changes}


def _family(genotype: dict, **changes: object) -> dict:
    member = {"lambda": 0.01, "lambdas": [0.01], "params": 1, "flops": 1}
    member.update(expected_complexity=0.5, one_shot_accuracy=None, genotype=genotype)
    return {"format": "hyperdarts.family", "version": 1, "meta": {}, "members": [member], **changes}


UNKNOWN_OP = _genotype(normal=[["conv_9x9", 0], *GENOTYPE["normal"][1:]])
BAD_NODE = _genotype(normal=[["sep_conv_3x3", 9], *GENOTYPE["normal"][1:]])


def _json(name: str, content: object) -> Callable[[Path], str]:
    def write(tmp: Path) -> str:
        path = tmp / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(path)

    return write


def _truncated_ckpt(tmp: Path, ckpt: Path) -> str:
    data = ckpt.read_bytes()
    (tmp / "cut.ckpt").write_bytes(data[: len(data) // 2])
    return str(tmp / "cut.ckpt")


def _truncated_mnist(tmp: Path) -> str:
    images = write_fake_mnist(tmp / "data", n_train=40) / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    return str(tmp / "data")


# id: (arguments after the subcommand, or a function of (tmp dir, search checkpoint) returning
# them; the text the one-line error must contain)
CASES: dict[str, tuple[Callable[[Path, Path], list[str]], list[str]]] = {
    "lambda_min > lambda_max": (
        lambda tmp, ckpt: ["fit", *SEARCH, "--model.init_args.lambda_max", "0.0001"],
        ["lambda_max=0.0001 must be greater than lambda_min=0.001"],
    ),
    "unknown op name": (
        lambda tmp, ckpt: [
            "fit",
            *SEARCH,
            "--model.init_args.primitives",
            "[none, sep_conv_3x3, conv_9x9]",
        ],
        ["primitives: unknown operation(s) ['conv_9x9']; choose from none, max_pool_3x3"],
    ),
    "too few nodes": (
        lambda tmp, ckpt: ["fit", *SEARCH, "--model.init_args.num_nodes", "1"],
        ["num_nodes=1: a cell needs at least 2 intermediate nodes"],
    ),
    "reductions do not fit the cells": (
        lambda tmp, ckpt: ["fit", *SEARCH, "--model.init_args.num_cells", "2"],
        ["num_cells=2: need at least 3 so that the reductions"],
    ),
    "batch larger than the split": (
        lambda tmp, ckpt: ["fit", *SEARCH, "--data.init_args.batch_size", "1000"],
        ["batch_size=1000 is larger than a part of the training split", "set batch_size <= 718"],
    ),
    "temperature <= 0": (
        lambda tmp, ckpt: ["fit", *SEARCH, "--model.init_args.tau_end", "0"],
        ["tau_start=1.0, tau_end=0.0: both must be positive and finite"],
    ),
    "max_consecutive_skips < 1": (
        lambda tmp, ckpt: ["fit", *SEARCH, "--model.init_args.max_consecutive_skips", "0"],
        ["max_consecutive_skips=0: must be >= 1"],
    ),
    "negative checkpoint interval": (
        lambda tmp, ckpt: ["fit", *SEARCH, "--checkpoint.last_every_n_train_steps", "-2"],
        ["checkpoint.last_every_n_train_steps=-2: must be >= 0"],
    ),
    "genotype JSON malformed": (
        lambda tmp, ckpt: [
            "fit",
            *RETRAIN,
            "--model.init_args.genotype",
            _json("g.json", "{")(tmp),
        ],
        ["g.json: not valid JSON"],
    ),
    "genotype JSON wrong version": (
        lambda tmp, ckpt: [
            "fit",
            *RETRAIN,
            "--model.init_args.genotype",
            _json("g.json", _genotype(version=7))(tmp),
        ],
        ["g.json: 'version' is 7; this hyperdarts reads version 1"],
    ),
    "genotype JSON unknown op": (
        lambda tmp, ckpt: [
            "fit",
            *RETRAIN,
            "--model.init_args.genotype",
            _json("g.json", UNKNOWN_OP)(tmp),
        ],
        ["g.json: normal[0]: unknown operation 'conv_9x9'; choose from"],
    ),
    "genotype JSON wrong node index": (
        lambda tmp, ckpt: [
            "fit",
            *RETRAIN,
            "--model.init_args.genotype",
            _json("g.json", BAD_NODE)(tmp),
        ],
        ["g.json: normal[0]: input node 9 is invalid for node 2; it must be in 0..1"],
    ),
    "family JSON malformed": (
        lambda tmp, ckpt: [
            "fit",
            *RETRAIN,
            "--model.init_args.genotype",
            _json("family.json", '{"members": [')(tmp) + "#0",
        ],
        ["family.json: not valid JSON"],
    ),
    "family JSON wrong version": (
        lambda tmp, ckpt: [
            "fit",
            *RETRAIN,
            "--model.init_args.genotype",
            _json("family.json", _family(GENOTYPE, version=2))(tmp) + "#0",
        ],
        ["family.json: 'version' is 2; this hyperdarts reads version 1"],
    ),
    "family JSON unknown op": (
        lambda tmp, ckpt: [
            "fit",
            *RETRAIN,
            "--model.init_args.genotype",
            _json("family.json", _family(UNKNOWN_OP))(tmp) + "#0",
        ],
        ["family.json: members[0].genotype: normal[0]: unknown operation 'conv_9x9'"],
    ),
    "family JSON wrong node index": (
        lambda tmp, ckpt: [
            "fit",
            *RETRAIN,
            "--model.init_args.genotype",
            _json("family.json", _family(BAD_NODE))(tmp) + "@0.01",
        ],
        ["family.json: members[0].genotype: normal[0]: input node 9 is invalid for node 2"],
    ),
    "checkpoint missing": (
        lambda tmp, ckpt: ["fit", *SEARCH, "--ckpt_path", str(tmp / "nowhere.ckpt")],
        ["--ckpt_path", "nowhere.ckpt: no such file", "or `last` to resume the newest run"],
    ),
    "checkpoint truncated": (
        lambda tmp, ckpt: ["fit", *SEARCH, "--ckpt_path", _truncated_ckpt(tmp, ckpt)],
        ["cut.ckpt: not a readable checkpoint", "use an earlier checkpoint of the run"],
    ),
    "checkpoint of another search space (other data)": (
        lambda tmp, ckpt: [
            "fit",
            "--config",
            str(CONFIGS / "mnist.yaml"),
            *SEARCH[2:],
            "--data.init_args.root",
            str(write_fake_mnist(tmp / "data", n_train=40).parents[1]),
            "--data.init_args.download",
            "false",
            "--ckpt_path",
            str(ckpt),
        ],
        ["comes from a different search space", "image_size: checkpoint 8, model 28"],
    ),
    "checkpoint of another model class": (
        lambda tmp, ckpt: ["fit", *RETRAIN, "--ckpt_path", str(ckpt)],
        ["holds a HyperDARTSSearch, but the config's model is a RetrainModule"],
    ),
    "dataset file truncated": (
        lambda tmp, ckpt: [
            "fit",
            "--config",
            str(CONFIGS / "mnist.yaml"),
            *QUIET,
            "--data.init_args.root",
            _truncated_mnist(tmp),
            "--data.init_args.download",
            "false",
        ],
        ["MNIST could not be loaded", "train-images-idx3-ubyte", "truncated or corrupt"],
    ),
    "budget unparseable": (
        lambda tmp, ckpt: ["derive", *SEARCH, "--ckpt_path", str(ckpt), "--budget", "12q"],
        ["budget '12q': expected a positive number of parameters", "1.5M"],
    ),
    "budget below the smallest member": (
        lambda tmp, ckpt: ["derive", *SEARCH, "--ckpt_path", str(ckpt), "--budget", "10"],
        ["budget 10 parameters is below the smallest architecture of the family"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_early_with_one_clear_line(
    case: str, tmp_path: Path, search_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, expected = CASES[case]
    run_dir = search_ckpt.parents[1]
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    args = build(tmp_path, search_ckpt)
    if args[0] == "fit":
        args += ["--trainer.default_root_dir", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    for text in expected:
        assert text in err, f"{text!r} not in {line!r}"
    assert "Traceback" not in err
    # before any training: no checkpoint, config or result of the new run; the earlier run as it was
    written = [p.name for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert written == [], written
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_new_run_never_writes_into_an_earlier_runs_directory(
    tmp_path: Path, search_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    earlier = tmp_path / "runs" / "a"
    shutil.copytree(search_ckpt.parents[1], earlier)
    before = {p: p.read_bytes() for p in earlier.rglob("*") if p.is_file()}
    args = ["fit", *SEARCH, "--trainer.default_root_dir", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--run_name", "a"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--run_name a: {earlier} already holds a run" in err
    assert "resume it with --ckpt_path last, or give this run another --run_name" in err
    assert {p: p.read_bytes() for p in earlier.rglob("*") if p.is_file()} == before
