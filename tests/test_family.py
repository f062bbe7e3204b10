"""The architecture family: derivation, exact costs, budget queries, files, pictures, W&B, derive.

Most tests use a tiny search module whose linear hypernetwork α(t) = t·slope + intercept is set by
hand, so that the right family is known: in every cell the edges from the two cell inputs carry
sep_conv_5x5 at small λ and max_pool_3x3 (input 0) / skip_connect (input 1) at large λ; the normal
cell switches at t = 0.3, the reduce cell at t = 0.7 (t = normalized log λ). That gives three
architectures, A > B > C in parameters. All other edges are uniform, hence never chosen.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import lightning as L
import matplotlib.image
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from hyperdarts.callbacks import WANDB_COLUMNS, FamilyCallback
from hyperdarts.data import DigitsDataModule
from hyperdarts.family import (
    BudgetError,
    EvalSpec,
    FamilyError,
    derive_family,
    family_meta,
    genotype_string,
    load_family,
    one_shot_accuracy,
    parse_budget,
    query_budget,
    save_family,
)
from hyperdarts.modules.search import HyperDARTSSearch
from hyperdarts.reports import format_family_table, plot_family, write_family_report
from hyperdarts.search_space.cells import edge_inputs
from hyperdarts.search_space.evaluation import EvalNetwork
from hyperdarts.search_space.genotypes import Genotype, load_genotype, one_hot
from hyperdarts.trainer import CheckpointError, HyperDARTSTrainer

SPACE = dict(
    num_channels=1,
    image_size=8,
    num_classes=10,
    init_channels=4,
    num_cells=3,
    num_nodes=4,
    hypernet="linear",
    lambda_min=1e-3,
    lambda_max=1.0,
)
SPEC = EvalSpec(num_channels=1, num_classes=10, image_size=8, init_channels=8, num_cells=5)
CROSSING = {"normal": 0.3, "reduce": 0.7}  # t at which a cell switches to the cheap ops
BIG = (("sep_conv_5x5", 0), ("sep_conv_5x5", 1)) * 4
SMALL = (("max_pool_3x3", 0), ("skip_connect", 1)) * 4
CONCAT = (2, 3, 4, 5)
A = Genotype(normal=BIG, normal_concat=CONCAT, reduce=BIG, reduce_concat=CONCAT)
B = Genotype(normal=SMALL, normal_concat=CONCAT, reduce=BIG, reduce_concat=CONCAT)
C = Genotype(normal=SMALL, normal_concat=CONCAT, reduce=SMALL, reduce_concat=CONCAT)


def hand_set(module: HyperDARTSSearch) -> HyperDARTSSearch:
    """Each input edge: logit 3 ± 10·(crossing − t) for the big and the small op, so the winner
    switches at the crossing while its logit stays ≥ 3 (the edge stays among the two strongest)."""
    ops = module.primitives
    slope = torch.zeros(module.hypernet.shape)
    intercept = torch.zeros(module.hypernet.shape)
    for c, crossing in enumerate(CROSSING.values()):
        for e, (src, _) in enumerate(edge_inputs(module.hparams.num_nodes)):
            if src >= 2:
                continue
            big, small = ops.index("sep_conv_5x5"), ops.index(SMALL[src][0])
            slope[c, e, big], intercept[c, e, big] = -10.0, 3 + 10 * crossing
            slope[c, e, small], intercept[c, e, small] = 10.0, 3 - 10 * crossing
    with torch.no_grad():
        module.hypernet.slope.copy_(slope)
        module.hypernet.intercept.copy_(intercept)
    return module


def lam_at(t: float) -> float:
    return math.exp(math.log(1e-3) + t * (math.log(1.0) - math.log(1e-3)))


def exact_params(genotype: Genotype) -> int:
    """Counted here independently: a fresh evaluation network with its auxiliary head, minus it."""
    net = EvalNetwork(genotype, 1, 10, image_size=8, init_channels=8, num_cells=5, auxiliary=True)
    return sum(p.numel() for n, p in net.named_parameters() if not n.startswith("auxiliary_head"))


@pytest.fixture(scope="module")
def module() -> HyperDARTSSearch:
    torch.manual_seed(0)
    return hand_set(HyperDARTSSearch(**SPACE))


@pytest.fixture(scope="module")
def family(module: HyperDARTSSearch) -> list:
    return derive_family(module, module.sampler.grid(9), SPEC)


@pytest.fixture(scope="module")
def sizes() -> dict[str, int]:
    return {"A": exact_params(A), "B": exact_params(B), "C": exact_params(C)}


def loader(n: int = 24) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    )
    return DataLoader(data, batch_size=8)


# --- derivation ----------------------------------------------------------------------------------


def test_family_has_the_expected_distinct_genotypes(family: list) -> None:
    assert [m.genotype for m in family] == [A, B, C]
    t = [k / 8 for k in range(9)]
    assert [len(m.lambdas) for m in family] == [3, 3, 3]
    assert family[0].lambdas == pytest.approx([lam_at(x) for x in t[:3]])
    assert family[2].lambdas == pytest.approx([lam_at(x) for x in t[6:]])
    assert all(m.lam == min(m.lambdas) for m in family)


def test_costs_decrease_as_lambda_grows(family: list) -> None:
    for bigger, smaller in zip(family, family[1:]):
        assert bigger.lam < smaller.lam
        assert bigger.params > smaller.params
        assert bigger.flops > smaller.flops
        assert bigger.expected_complexity > smaller.expected_complexity


def test_member_params_are_the_exact_evaluation_network_count(family: list) -> None:
    for member in family:
        assert member.params == exact_params(member.genotype)


def test_one_shot_accuracy_is_the_supernet_at_one_hot_weights(module: HyperDARTSSearch) -> None:
    members = derive_family(module, [lam_at(0.0), lam_at(1.0)], SPEC, loader())
    module.net.train()
    accuracy = one_shot_accuracy(module, A, loader())
    assert module.net.training, "the module's mode is restored"
    module.net.eval()
    weights = one_hot(A, module.primitives, 4)
    with torch.no_grad():
        hits = sum(int((module.net(x, weights).argmax(1) == y).sum()) for x, y in loader())
    module.net.train()
    assert accuracy == members[0].one_shot_accuracy == hits / 24
    assert 0.0 <= members[1].one_shot_accuracy <= 1.0


# --- budget ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        (lambda s: s["A"], A),
        (lambda s: 10**12, A),
        (lambda s: s["A"] - 1, B),
        (lambda s: (s["A"] + s["B"]) // 2, B),
        (lambda s: s["B"], B),
        (lambda s: s["B"] - 1, C),
        (lambda s: s["C"], C),
    ],
)
def test_query_budget_returns_the_largest_that_fits(
    module: HyperDARTSSearch, sizes: dict[str, int], budget, expected: Genotype
) -> None:
    member = query_budget(module, budget(sizes), SPEC, num=40)
    assert member.genotype == expected
    assert member.params == exact_params(expected) <= budget(sizes)
    assert all(module.genotype(lam) == expected for lam in member.lambdas)


def test_query_budget_finds_architectures_between_scan_points(
    module: HyperDARTSSearch, sizes: dict[str, int]
) -> None:
    # Two scan points (λ_min → A, λ_max → C): only bisection can find B.
    assert query_budget(module, sizes["A"] - 1, SPEC, num=2, refine_steps=0).genotype == C
    assert query_budget(module, sizes["A"] - 1, SPEC, num=2).genotype == B


def test_budget_below_the_smallest_names_it(
    module: HyperDARTSSearch, sizes: dict[str, int]
) -> None:
    with pytest.raises(BudgetError, match=f"{sizes['C']:,} parameters") as err:
        query_budget(module, sizes["C"] - 1, SPEC, num=20)
    assert "λ=" in str(err.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("800k", 800_000),
        ("800K", 800_000),
        ("1.5M", 1_500_000),
        ("3m", 3_000_000),
        ("2000", 2000),
        ("1e6", 1_000_000),
        ("2.5e3k", 2_500_000),
        ("2G", 2 * 10**9),
        ("0.5B", 500_000_000),
        (" 12 k ", 12_000),
        ("1_000", 1000),
        ("1234.9", 1234),
        (5000, 5000),
    ],
)
def test_parse_budget(text: str | int, value: int) -> None:
    assert parse_budget(text) == value


@pytest.mark.parametrize(
    "text", ["", "abc", "1.5X", "-5", "0", "1e-3", "k", "1.5 MB", "1,000", "1e999999999", "2e15k"]
)
def test_parse_budget_rejects_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(BudgetError, match="800k, 1.5M"):
        parse_budget(text)


@given(st.integers(min_value=1, max_value=10**12))
def test_parse_budget_round_trips_integers(n: int) -> None:
    assert parse_budget(str(n)) == n
    assert parse_budget(f"{n}k") == n * 1000


# --- files ----------------------------------------------------------------------------------------


def test_family_json_round_trip(family: list, module: HyperDARTSSearch, tmp_path: Path) -> None:
    measured = [replace(m, one_shot_accuracy=0.5 if i == 1 else None) for i, m in enumerate(family)]
    meta = family_meta(module, SPEC, "runs/x/checkpoints/last.ckpt")
    save_family(measured, tmp_path / "family.json", meta)
    members, loaded_meta = load_family(tmp_path / "family.json")
    assert members == measured
    assert loaded_meta == json.loads(json.dumps(meta))
    assert loaded_meta["spec"]["init_channels"] == 8
    assert loaded_meta["checkpoint"] == "runs/x/checkpoints/last.ckpt"


def _corrupt(data: dict, how: str) -> str:
    if how == "format":
        data["format"] = "hyperdarts.genotype"
    elif how == "version":
        data["version"] = 2
    elif how == "missing":
        del data["members"][1]["params"]
    elif how == "params":
        data["members"][0]["params"] = "many"
    elif how == "op":
        data["members"][2]["genotype"]["reduce"][3][0] = "conv_9x9"
    return json.dumps(data)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("format", "'format' is 'hyperdarts.genotype'"),
        ("version", "'version' is 2"),
        ("missing", r"members\[1\]: missing field\(s\) \['params'\]"),
        ("params", r"members\[0\]\.params: expected a non-negative integer"),
        ("op", r"members\[2\]\.genotype: reduce\[3\]: unknown operation 'conv_9x9'"),
    ],
)
def test_load_family_names_file_and_field(
    family: list, module: HyperDARTSSearch, tmp_path: Path, how: str, message: str
) -> None:
    path = save_family(family, tmp_path / "family.json", family_meta(module, SPEC))
    path.write_text(_corrupt(json.loads(path.read_text()), how))
    with pytest.raises(FamilyError, match=message) as err:
        load_family(path)
    assert str(path) in str(err.value)


def test_load_family_rejects_malformed_json_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "family.json"
    bad.write_text('{"format": "hyperdarts.family", ')
    with pytest.raises(FamilyError, match=f"{bad}: not valid JSON"):
        load_family(bad)
    with pytest.raises(FamilyError, match="does not exist"):
        load_family(tmp_path / "nowhere.json")


def test_report_files_and_pictures(family: list, module: HyperDARTSSearch, tmp_path: Path) -> None:
    stale = tmp_path / "cells" / "cell_7_reduce.png"  # from an earlier, larger family
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    files = write_family_report(family, tmp_path, family_meta(module, SPEC))
    assert sorted((tmp_path / "cells").iterdir()) == sorted(files.cells)
    assert [p.name for p in files.cells] == [
        f"cell_{i}_{ct}.png" for i in range(3) for ct in ("normal", "reduce")
    ]
    rows = files.csv.read_text().splitlines()
    assert rows[0] == "lambda,lambdas,params,flops,expected_complexity,one_shot_accuracy,genotype"
    assert [int(r.split(",")[2]) for r in rows[1:]] == [m.params for m in family]
    assert genotype_string(B) in rows[2]
    for png in [files.plot, *files.cells]:
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0.01, f"{png.name} is blank"


def test_plot_with_one_shot_accuracies(family: list, tmp_path: Path) -> None:
    measured = [replace(m, one_shot_accuracy=0.1 * i) for i, m in enumerate(family)]
    image = matplotlib.image.imread(plot_family(measured, tmp_path / "family.png"))
    assert image[..., :3].std() > 0.01


def test_family_table(family: list) -> None:
    table = format_family_table(family)
    lines = table.splitlines()
    assert len(lines) == 4 and "params" in lines[0] and "one-shot acc" in lines[0]
    assert f"{family[0].params:,}" in lines[1] and lines[1].rstrip().endswith("-")


# --- the derive subcommand ------------------------------------------------------------------------


@pytest.fixture
def checkpoint(module: HyperDARTSSearch, tmp_path: Path) -> Path:
    """What a search checkpoint holds for derive: weights, hyperparameters, the module's state."""
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    state = {"rng_state": module.rng.get_state(), "tau": 1.0}
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "hyperdarts": state,
        },
        path,
    )
    return path


def _trainer() -> HyperDARTSTrainer:
    return HyperDARTSTrainer(accelerator="cpu", logger=False, enable_progress_bar=False)


def test_derive_writes_the_family_into_the_run_directory(checkpoint: Path, capsys) -> None:
    fresh = HyperDARTSSearch(**SPACE)
    _trainer().derive(
        fresh, None, str(checkpoint), one_shot=False, eval_init_channels=8, eval_num_cells=5
    )
    run = checkpoint.parent.parent
    members, meta = load_family(run / "family.json")
    assert [m.genotype for m in members] == [A, B, C]
    assert meta["checkpoint"] == str(checkpoint)
    assert (run / "family.png").is_file() and len(list((run / "cells").glob("*.png"))) == 6
    assert "family.json" in capsys.readouterr().out


def test_derive_with_explicit_lambdas_and_budget(
    checkpoint: Path, sizes: dict[str, int], tmp_path: Path
) -> None:
    args = dict(one_shot=False, eval_init_channels=8, eval_num_cells=5)
    out = tmp_path / "out"
    _trainer().derive(
        HyperDARTSSearch(**SPACE), None, str(checkpoint), lambdas=[1.0, 1e-3], out=str(out), **args
    )
    assert [m.genotype for m in load_family(out / "family.json")[0]] == [A, C]
    budget = str(sizes["A"] - 1)
    _trainer().derive(
        HyperDARTSSearch(**SPACE), None, str(checkpoint), budget=budget, out=str(out), **args
    )
    assert load_genotype(out / "genotype.json") == B


def test_derive_rejects_lambdas_outside_the_searched_range(checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="outside the searched range"):
        _trainer().derive(
            HyperDARTSSearch(**SPACE), None, str(checkpoint), lambdas=[5.0], one_shot=False
        )


@pytest.mark.parametrize(
    ("ckpt", "message"),
    [
        (None, "derive needs --ckpt_path"),
        ("nowhere.ckpt", "no such file"),
        ("garbage", "not a readable checkpoint"),
        ("not_lightning", "not a Lightning checkpoint"),
    ],
)
def test_derive_rejects_bad_checkpoints(tmp_path: Path, ckpt: str | None, message: str) -> None:
    if ckpt == "garbage":
        (tmp_path / ckpt).write_text("this is not a checkpoint")
    if ckpt == "not_lightning":
        torch.save({"weights": torch.zeros(2)}, tmp_path / ckpt)
    path = None if ckpt is None else str(tmp_path / ckpt)
    with pytest.raises(CheckpointError, match=message):
        _trainer().derive(HyperDARTSSearch(**SPACE), None, path, one_shot=False)


def test_derive_rejects_a_checkpoint_of_another_search_space(checkpoint: Path) -> None:
    other = HyperDARTSSearch(**{**SPACE, "init_channels": 6, "lambda_max": 2.0})
    with pytest.raises(CheckpointError, match="different search space") as err:
        _trainer().derive(other, None, str(checkpoint), one_shot=False)
    text = str(err.value)
    assert "init_channels: checkpoint 4, model 6" in text
    assert "lambda_max: checkpoint 1.0, model 2.0" in text
    assert "shape differs (" in text
    assert "checkpoint (4, 1, 3, 3), model (6, 1, 3, 3)" in text


def test_derive_notices_a_reordered_search_space(checkpoint: Path) -> None:
    """Same tensor shapes, different meaning: only the saved settings reveal it."""
    reordered = list(reversed(HyperDARTSSearch(**SPACE).primitives))
    with pytest.raises(CheckpointError, match="primitives: checkpoint None"):
        _trainer().derive(
            HyperDARTSSearch(**SPACE, primitives=reordered), None, str(checkpoint), one_shot=False
        )


# --- end of a real (tiny) search: callback, W&B, derive from the Lightning checkpoint -------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, FamilyCallback]:
    """A two-step search with the callback and an offline WandbLogger; W&B env restored after."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    run = tmp_path_factory.mktemp("search")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(run))
        mp.setenv("WANDB_SILENT", "true")
        callback = FamilyCallback(num_lambdas=3, eval_init_channels=8, eval_num_cells=5)
        trainer = L.Trainer(
            default_root_dir=run,
            max_steps=2,
            limit_val_batches=2,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=WandbLogger(offline=True, save_dir=str(run), project="hyperdarts-test"),
            callbacks=[callback],
        )
        try:
            trainer.fit(
                HyperDARTSSearch(**SPACE), DigitsDataModule(batch_size=32, arch_fraction=0.1)
            )
            ckpt = run / "checkpoints" / "last.ckpt"
            trainer.save_checkpoint(ckpt)
        finally:
            wandb.finish()
    return run, ckpt, callback


def test_callback_writes_the_family_and_logs_it_to_wandb(searched) -> None:
    run, _, callback = searched
    assert callback.outputs is not None and callback.outputs.json == run / "family.json"
    members, _ = load_family(run / "family.json")
    assert len(members) == len(callback.members) >= 1
    assert all(m.one_shot_accuracy is not None for m in members)
    (offline,) = run.glob("wandb/offline-run-*")
    (table_file,) = (offline / "files" / "media" / "table").rglob("*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == WANDB_COLUMNS
    assert [row[1] for row in table["data"]] == [m.params for m in members]
    assert [row[4] for row in table["data"]] == pytest.approx(
        [m.one_shot_accuracy for m in members]
    )
    images = list((offline / "files" / "media" / "images").rglob("*.png"))
    distinct = {p.read_bytes() for p in callback.outputs.cells}  # W&B stores equal images once
    assert len(images) == 1 + len(distinct)


def test_derive_reads_a_lightning_checkpoint(searched, tmp_path: Path) -> None:
    _, ckpt, callback = searched
    out = tmp_path / "derived"
    _trainer().derive(
        HyperDARTSSearch(**SPACE),
        DigitsDataModule(batch_size=32, arch_fraction=0.1),
        str(ckpt),
        num=3,
        out=str(out),
        eval_init_channels=8,
        eval_num_cells=5,
    )
    members, _ = load_family(out / "family.json")
    assert [m.genotype for m in members] == [m.genotype for m in callback.members]
    assert all(0 <= m.one_shot_accuracy <= 1 for m in members)
