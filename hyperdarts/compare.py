"""Does one hypernetwork search pay off? The family against baselines, retrained alike.

``python -m hyperdarts compare --config configs/compare_digits.yaml`` runs, with the same search
config and the same retraining recipe for every method:

- ``hyperdarts``: one search; its family at the K values of ``lambdas``;
- ``darts_fixed_lambda``: one DARTS search with a fixed penalty per λ (K searches);
- ``darts``: one DARTS search without penalty;
- ``fair_darts``, ``drnas``: one hypernetwork search each with those relaxations;
- ``random``: for each ``hyperdarts`` member, an architecture drawn at random from the search space
  with the same parameter count (within ``random_tolerance``) — nothing searched.

Every architecture is retrained over ``seeds`` by the frontier (hyperdarts/frontier.py) and tested
at its best validation epoch. Search cost is measured (wall-clock and this process's CPU seconds).
Each method's front of (parameters, mean test accuracy) is scored by its hypervolume against one
reference point shared by all methods.

A rerun skips the searches that finished (``<out>/<method>/family.json``) and the retraining runs
that finished, and resumes interrupted ones, so an interrupted comparison loses little.

compare.json, version 1::

    {"format": "hyperdarts.compare", "version": 1, "config": {...}, "machine": {...},
     "reference": {"params": 66000, "accuracy": 0.9},
     "methods": [{"method": "hyperdarts", "search": {"wall_s": 150.2, "cpu_s": 290.1,
                  "searches": 1}, "hypervolume": 1234.5, "normalized_hypervolume": 0.42,
                  "members": [... frontier.json members ...]}]}
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from hyperdarts.cli import default_wandb_offline
from hyperdarts.cli import main as cli_main
from hyperdarts.complexity import ExpectedComplexity, cost_tables
from hyperdarts.errors import HyperDARTSError
from hyperdarts.family import (
    Costs,
    EvalSpec,
    FamilyMember,
    derive_family,
    family_meta,
    genotype_string,
    load_family,
    save_family,
)
from hyperdarts.frontier import FrontierRow, collect, resolved_config, run_frontier
from hyperdarts.io import atomic_write_text, read_json
from hyperdarts.pareto import hypervolume, normalized_hypervolume
from hyperdarts.reports import save_figure, si
from hyperdarts.search_space.genotypes import Genotype, one_hot
from hyperdarts.search_space.networks import SuperNet
from hyperdarts.search_space.sampling import matched_random_genotype

FORMAT = "hyperdarts.compare"
VERSION = 1
# How each method searches: over the λ grid with one search, once per λ, once, or not at all.
METHODS = {
    "hyperdarts": ("grid", None),
    "fair_darts": ("grid", "fair_darts.yaml"),
    "drnas": ("grid", "drnas.yaml"),
    "darts_fixed_lambda": ("per_lambda", "darts_fixed_lambda.yaml"),
    "darts": ("once", "darts.yaml"),
    "random": ("random", None),
}
CSV_COLUMNS = (
    "method",
    "member",
    "lambda",
    "params",
    "flops",
    "seeds",
    "test_acc_mean",
    "test_acc_std",
    "genotype",
)


class CompareError(HyperDARTSError, ValueError):
    """A comparison that cannot run as configured; the message names the setting."""


@dataclass(frozen=True)
class Cost:
    """Measured search cost of a method: all its searches together."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    searches: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.wall_s + other.wall_s, self.cpu_s + other.cpu_s, self.searches + other.searches
        )


@dataclass
class CompareConfig:
    out: str
    search_config: str
    retrain_config: str
    lambdas: list[float]
    seeds: list[int]
    methods: list[str]
    baselines: str = "configs/baselines"
    search_args: list[str] = field(default_factory=list)
    retrain_args: list[str] = field(default_factory=list)
    random_tolerance: float = 0.05
    random_seed: int = 0
    reference_params: float | None = None
    reference_accuracy: float = 0.0
    wandb_project: str | None = None


@dataclass(frozen=True)
class MethodResult:
    method: str
    cost: Cost
    rows: list[FrontierRow]

    @property
    def points(self) -> list[tuple[float, float]]:
        return [(row.runs[0].params, row.mean) for row in self.rows]


# --- running --------------------------------------------------------------------------------------


def run_compare(cfg: CompareConfig) -> Path:
    """Search with every method, retrain every architecture, write and log the comparison."""
    _check(cfg)
    out = Path(cfg.out).resolve()
    spec_args = _retrain_size(cfg)
    results = []
    for method in cfg.methods:
        family, cost = search(method, cfg, out, spec_args)
        print(f"hyperdarts compare: {method}: search done ({cost.wall_s:.0f} s), retraining")
        frontier_out = out / method / "frontier"
        run_frontier(family, cfg.retrain_config, None, cfg.seeds, frontier_out, cfg.retrain_args)
        members, _ = load_family(family)
        results.append(MethodResult(method, cost, collect(frontier_out, members)))
    path = write_comparison(results, cfg, out)
    print(format_comparison(results, _reference(results, cfg)))
    print(f"  {path}\n  {out / 'compare.csv'}\n  {out / 'compare.png'}")
    if cfg.wandb_project:
        log_comparison(results, cfg, out)
    return path


def _check(cfg: CompareConfig) -> None:
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown or not cfg.methods:
        raise CompareError(f"methods: {unknown or '[]'}; choose from {', '.join(METHODS)}")
    if "random" in cfg.methods and "hyperdarts" not in cfg.methods:
        raise CompareError("methods: random is matched to hyperdarts's family; add hyperdarts")
    if not cfg.lambdas or not all(lam >= 0 and math.isfinite(lam) for lam in cfg.lambdas):
        raise CompareError(f"lambdas: {cfg.lambdas}; give one or more finite λ >= 0")
    if not cfg.seeds:
        raise CompareError("seeds: give at least one seed")
    for name in ("search_config", "retrain_config"):
        if not Path(getattr(cfg, name)).is_file():
            raise CompareError(f"{name}: {getattr(cfg, name)} does not exist")
    for method in cfg.methods:
        overlay = METHODS[method][1]
        if overlay and not (Path(cfg.baselines) / overlay).is_file():
            raise CompareError(
                f"baselines: {Path(cfg.baselines) / overlay} does not exist; set baselines to the "
                "directory of the baseline configs (configs/baselines in the repository)"
            )


def _retrain_size(cfg: CompareConfig) -> dict[str, int]:
    """Width, depth and stem of the retraining network: the size at which members are costed and
    random architectures matched."""
    model = resolved_config(Path(cfg.retrain_config), cfg.retrain_args)["model"]["init_args"]
    return {k: model[k] for k in ("init_channels", "num_cells", "stem_multiplier")}


def search(method: str, cfg: CompareConfig, out: Path, size: dict[str, int]) -> tuple[Path, Cost]:
    """The method's family file and its search cost; reused when an earlier run finished it."""
    family, cost_file = out / method / "family.json", out / method / "search_cost.json"
    if family.is_file() and cost_file.is_file():
        return family, Cost(**read_json(cost_file, CompareError, "search cost"))
    kind, overlay = METHODS[method]
    overlay = None if overlay is None else str(Path(cfg.baselines) / overlay)
    if kind == "random":
        members, meta, cost = _random_family(cfg, out)
    elif kind == "per_lambda":
        members, meta, cost = [], {}, Cost()
        for lam in cfg.lambdas:
            fixed = [
                "--model.init_args.lambda_min",
                str(lam),
                "--model.init_args.lambda_max",
                str(lam),
            ]
            (member,), meta, one = _searched_family(
                cfg, out, f"{method}-{lam:g}", overlay, fixed, [lam], size
            )
            members.append(member)
            cost += one
    else:
        lambdas = [0.0] if kind == "once" else cfg.lambdas
        members, meta, cost = _searched_family(cfg, out, method, overlay, [], lambdas, size)
    save_family(members, family, meta)
    atomic_write_text(cost_file, json.dumps(cost.__dict__, indent=2) + "\n")
    return family, cost


def _searched_family(
    cfg: CompareConfig,
    out: Path,
    name: str,
    overlay: str | None,
    extra: list[str],
    lambdas: list[float],
    size: dict[str, int],
) -> tuple[list[FamilyMember], dict[str, Any], Cost]:
    args = ["fit", "--config", cfg.search_config, *(["--config", overlay] if overlay else [])]
    args += [*cfg.search_args, *extra, "--run_name", name]
    args += ["--trainer.default_root_dir", str(out / "searches")]
    last = out / "searches" / name / "checkpoints" / "last.ckpt"
    if last.is_file():  # an earlier try was cut short: resume it (its cost so far is not counted)
        args += ["--ckpt_path", str(last)]
    with measured() as cost:
        cli = cli_main(args)
        _finish_wandb()
        spec = EvalSpec.for_module(cli.model, size["init_channels"], size["num_cells"])
        members = derive_family(cli.model, lambdas, spec)
    meta = family_meta(
        cli.model, spec, getattr(cli.trainer.checkpoint_callback, "last_model_path", None)
    )
    return members, meta, cost()


def _random_family(
    cfg: CompareConfig, out: Path
) -> tuple[list[FamilyMember], dict[str, Any], Cost]:
    """For each hyperdarts member, a random architecture with its parameter count (counted at the
    size the hyperdarts family was costed at)."""
    targets, meta = load_family(out / "hyperdarts" / "family.json")
    spec = EvalSpec(**meta["spec"])
    space = meta["search_space"]
    complexity = _complexity(space, spec)
    members, costs = [], Costs(spec)
    with measured(searches=0) as cost:  # drawn, not searched
        for i, target in enumerate(targets):
            genotype = matched_random_genotype(
                target.params,
                costs.params,
                tolerance=cfg.random_tolerance,
                seed=cfg.random_seed + i,
                primitives=space["primitives"],
                num_nodes=space["num_nodes"],
            )
            members.append(
                FamilyMember(
                    lambdas=target.lambdas,  # the λ of the member it is matched to
                    genotype=genotype,
                    params=costs.params(genotype),
                    flops=costs.flops(genotype),
                    expected_complexity=complexity(genotype),
                )
            )
    return (
        members,
        {**meta, "random": {"matched_to": "hyperdarts", "tolerance": cfg.random_tolerance}},
        cost(),
    )


def _complexity(space: dict[str, Any], spec: EvalSpec) -> Callable[[Genotype], float]:
    """Normalized complexity C of a genotype in the searched supernet, as the search counts it."""
    primitives = tuple(space["primitives"])
    net = SuperNet(
        spec.num_channels,
        spec.num_classes,
        spec.image_size,
        space["init_channels"],
        space["num_cells"],
        space["num_nodes"],
        space["stem_multiplier"],
        primitives,
    )
    measure = ExpectedComplexity(cost_tables(net, spec.image_size, space["complexity"]))
    return lambda g: float(measure(one_hot(g, primitives, space["num_nodes"])))


@contextmanager
def measured(searches: int = 1) -> Iterator[Callable[[], Cost]]:
    """Wall-clock and CPU seconds of the block (CPU: every thread of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    done: list[Cost] = []
    yield lambda: done[0]
    done.append(Cost(time.perf_counter() - wall, time.process_time() - cpu, searches))


def _finish_wandb() -> None:
    """End the W&B run a search's logger opened, so the next fit starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


# --- the comparison -------------------------------------------------------------------------------


def _reference(results: Sequence[MethodResult], cfg: CompareConfig) -> tuple[float, float]:
    """One reference point for every method: 10 % beyond the largest retrained network."""
    largest = max((p for r in results for p, _ in r.points), default=1.0)
    return (cfg.reference_params or 1.1 * largest, cfg.reference_accuracy)


def method_summary(result: MethodResult, reference: tuple[float, float]) -> dict[str, Any]:
    return {
        "method": result.method,
        "search": result.cost.__dict__,
        "hypervolume": hypervolume(result.points, reference),
        "normalized_hypervolume": normalized_hypervolume(result.points, reference),
        "members": [row.to_dict() for row in result.rows],
    }


def write_comparison(results: Sequence[MethodResult], cfg: CompareConfig, out: Path) -> Path:
    reference = _reference(results, cfg)
    data = {
        "format": FORMAT,
        "version": VERSION,
        "config": cfg.__dict__,
        "machine": machine(),
        "reference": {"params": reference[0], "accuracy": reference[1]},
        "methods": [method_summary(r, reference) for r in results],
    }
    atomic_write_text(out / "compare.csv", comparison_csv(results))
    plot_comparison(results, reference, out / "compare.png")
    return atomic_write_text(out / "compare.json", json.dumps(data, indent=2) + "\n")


def machine() -> dict[str, Any]:
    """Where the numbers were measured: they mean little without it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "commit": commit,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def comparison_csv(results: Sequence[MethodResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for result in results:
        for row in result.rows:
            writer.writerow(
                [
                    result.method,
                    row.member,
                    f"{row.family.lam:.6g}",
                    row.runs[0].params,
                    row.runs[0].flops,
                    " ".join(str(r.seed) for r in row.runs),
                    f"{row.mean:.6f}",
                    "" if row.std is None else f"{row.std:.6f}",
                    genotype_string(row.family.genotype),
                ]
            )
    return buffer.getvalue()


def plot_comparison(
    results: Sequence[MethodResult], reference: tuple[float, float], path: Path
) -> Path:
    """Test accuracy (mean ± std over seeds) against parameters, one series per method."""
    fig = Figure(figsize=(7.2, 4.8))
    ax = fig.add_subplot()
    for result in results:
        rows = sorted(result.rows, key=lambda r: r.runs[0].params)
        hv = normalized_hypervolume(result.points, reference)
        ax.errorbar(
            [r.runs[0].params for r in rows],
            [r.mean for r in rows],
            yerr=[r.std or 0.0 for r in rows],
            fmt="o-",
            capsize=3,
            alpha=0.85,
            label=f"{result.method} (HV {hv:.3f})",
        )
    ax.set_xlabel("parameters (retrained network)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)))
    ax.set_title("Accuracy against size, per method")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def format_comparison(results: Sequence[MethodResult], reference: tuple[float, float]) -> str:
    header = ("method", "λ", "params", "FLOPs", "test acc", "search s (wall/CPU)", "HV")
    lines = []
    for result in results:
        hv = f"{normalized_hypervolume(result.points, reference):.4f}"
        cost = f"{result.cost.wall_s:.0f}/{result.cost.cpu_s:.0f}"
        for k, row in enumerate(sorted(result.rows, key=lambda r: -r.runs[0].params)):
            acc = f"{row.mean:.4f}" + ("" if row.std is None else f" ± {row.std:.4f}")
            lines.append(
                (
                    result.method if k == 0 else "",
                    f"{row.family.lam:.3g}",
                    f"{row.runs[0].params:,}",
                    si(row.runs[0].flops),
                    acc,
                    cost if k == 0 else "",
                    hv if k == 0 else "",
                )
            )
    widths = [max(len(x[c]) for x in [header, *lines]) for c in range(len(header))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(x, widths)) for x in [header, *lines])


def log_comparison(results: Sequence[MethodResult], cfg: CompareConfig, out: Path) -> None:
    """The table, the hypervolumes and the figure in one W&B run of ``wandb_project``."""
    default_wandb_offline()
    import wandb  # only where W&B is used: importing it is slow

    reference = _reference(results, cfg)
    columns = ["method", "lambda", "params", "flops", "test_acc_mean", "test_acc_std", "seeds"]
    data = [
        [
            r.method,
            row.family.lam,
            row.runs[0].params,
            row.runs[0].flops,
            row.mean,
            row.std,
            len(row.runs),
        ]
        for r in results
        for row in r.rows
    ]
    run = wandb.init(
        project=cfg.wandb_project,
        dir=str(out),
        name=f"compare-{out.name}",
        job_type="compare",
        config=cfg.__dict__,
    )
    try:
        summary = {
            f"compare/{r.method}/normalized_hypervolume": normalized_hypervolume(
                r.points, reference
            )
            for r in results
        }
        summary.update({f"compare/{r.method}/search_wall_s": r.cost.wall_s for r in results})
        run.log(
            {
                "compare/table": wandb.Table(columns=columns, data=data),
                "compare/plot": wandb.Image(str(out / "compare.png")),
                **summary,
            }
        )
    finally:
        run.finish()


# --- command line ---------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m hyperdarts compare",
        description="Compare the hyperdarts family with baselines (fixed-λ DARTS, DARTS, Fair "
        "DARTS, DrNAS, random architectures), every architecture retrained with one recipe.",
    )
    parser.add_argument(
        "--config", action=ActionConfigFile, help="e.g. configs/compare_digits.yaml"
    )
    parser.add_class_arguments(CompareConfig, nested_key=None)
    return parser


def main(argv: Sequence[str]) -> Path:
    """``python -m hyperdarts compare ARGV``; errors a user can fix print their message alone."""
    args = build_parser().parse_args(list(argv))
    cfg = CompareConfig(**{k: args[k] for k in CompareConfig.__dataclass_fields__})
    try:
        return run_compare(cfg)
    except HyperDARTSError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
