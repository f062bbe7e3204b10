"""The frontier of a family: each member retrained from scratch over seeds, accuracy against size.

``python -m hyperdarts frontier --family runs/.../family.json --config configs/digits_retrain.yaml``
runs, for every member (or ``--member i``) and every seed, the same ``fit`` a user would run by
hand, through the CLI, then tests the checkpoint with the best validation accuracy. The config file
is the only source of the recipe; LightningCLI arguments after ``--`` apply to every run.

Each finished run leaves ``<out>/results/member<i>-seed<s>.json``; a rerun skips those runs and
resumes interrupted ones from their ``last.ckpt``, so an interrupted frontier loses at most one
epoch. The summary is rebuilt from all results after every run: frontier.json (version 1, below),
frontier.csv and frontier.png, and logged to W&B when the config logs to W&B.

frontier.json, version 1::

    {"format": "hyperdarts.frontier", "version": 1, "family": "/abs/family.json",
     "config": "/abs/digits_retrain.yaml", "overrides": [], "family_meta": {...},
     "members": [{"member": 0, "lambda": 0.001, "lambdas": [...], "genotype": {...},
                  "family_params": 2395054, "family_flops": 737273088,
                  "params": 36586, "flops": 871168, "seeds": [0, 1], "test_acc": [0.97, 0.98],
                  "best_val_acc": [0.98, 0.99], "test_acc_mean": 0.975, "test_acc_std": 0.007}]}

``family_params``/``family_flops`` are the family's counts (at the width and depth it was costed
at); ``params``/``flops`` are counted on the retrained network; ``test_acc_std`` is the sample
standard deviation over seeds (null for one seed).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.rank_zero import rank_zero_only
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from hyperdarts.cli import default_wandb_offline
from hyperdarts.cli import main as cli_main
from hyperdarts.errors import HyperDARTSError
from hyperdarts.family import FamilyMember, genotype_string, load_family
from hyperdarts.io import atomic_write_text
from hyperdarts.modules.retrain import describe_members
from hyperdarts.reports import save_figure, si
from hyperdarts.search_space.genotypes import Genotype

FORMAT = "hyperdarts.frontier"
VERSION = 1
RUN_FORMAT = "hyperdarts.frontier_run"
CSV_COLUMNS = (
    "member",
    "lambda",
    "params",
    "flops",
    "family_params",
    "family_flops",
    "seeds",
    "test_acc",
    "test_acc_mean",
    "test_acc_std",
    "genotype",
)


class FrontierError(HyperDARTSError, ValueError):
    """A frontier that cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class RunResult:
    """One member retrained with one seed, tested at its best validation epoch."""

    member: int
    seed: int
    genotype: Genotype
    params: int
    flops: int
    test_acc: float
    best_val_acc: float
    checkpoint: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT,
            "version": VERSION,
            "member": self.member,
            "seed": self.seed,
            "genotype": self.genotype.to_dict(),
            "params": self.params,
            "flops": self.flops,
            "test_acc": self.test_acc,
            "best_val_acc": self.best_val_acc,
            "checkpoint": self.checkpoint,
        }

    @classmethod
    def load(cls, path: Path) -> RunResult:
        try:
            data = json.loads(path.read_text())
            if data.get("format") != RUN_FORMAT or data.get("version") != VERSION:
                raise ValueError(f"not a {RUN_FORMAT} version {VERSION} file")
            fields = {k: data[k] for k in cls.__dataclass_fields__ if k != "genotype"}
            return cls(genotype=Genotype.from_dict(data["genotype"], str(path)), **fields)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise FrontierError(
                f"{path}: unreadable run result ({err}); delete it to retrain that run"
            ) from None


@dataclass(frozen=True)
class FrontierRow:
    """A member and its results over seeds."""

    member: int
    family: FamilyMember
    runs: tuple[RunResult, ...]

    @property
    def test_accs(self) -> list[float]:
        return [r.test_acc for r in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.test_accs)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.test_accs) if len(self.runs) > 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "lambda": self.family.lam,
            "lambdas": list(self.family.lambdas),
            "genotype": self.family.genotype.to_dict(),
            "family_params": self.family.params,
            "family_flops": self.family.flops,
            "params": self.runs[0].params,
            "flops": self.runs[0].flops,
            "seeds": [r.seed for r in self.runs],
            "test_acc": self.test_accs,
            "best_val_acc": [r.best_val_acc for r in self.runs],
            "test_acc_mean": self.mean,
            "test_acc_std": self.std,
        }


@dataclass(frozen=True)
class FrontierFiles:
    json: Path
    csv: Path
    plot: Path


# --- running --------------------------------------------------------------------------------------


def run_frontier(
    family: str | Path,
    config: str | Path,
    member: int | None = None,
    seeds: Sequence[int] = (0,),
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> FrontierFiles | None:
    """Retrain the family's members (or only ``member``) once per seed; write the summary.

    Returns the summary files (``None`` on ranks other than zero, which write nothing).
    """
    family, config = Path(family).resolve(), Path(config).resolve()
    members, meta = load_family(family)
    indices = _selected(members, member, family)
    if not seeds:
        raise FrontierError("--seeds: give at least one seed")
    out = Path(out).resolve() if out is not None else family.parent / f"frontier-{config.stem}"
    wandb_args = _check_recipe(resolved_config(config, overrides), config)
    todo = [(i, s) for s in seeds for i in indices if not result_path(out, i, s).is_file()]
    _say(f"hyperdarts: frontier of {family}: {len(todo)} runs to do, out {out.resolve()}")
    header = _header(family, config, overrides, meta)
    for i, seed in todo:
        result = retrain(config, family, i, seed, out, overrides, wandb_args is not None)
        if rank_zero_only.rank == 0:  # the summary so far, in case a later run is cut short
            atomic_write_text(result_path(out, i, seed), json.dumps(result.to_dict(), indent=2))
            write_frontier(collect(out, members), out, header)
    if rank_zero_only.rank != 0:
        return None
    rows = collect(out, members)
    summary = write_frontier(rows, out, header)
    _say(f"{format_frontier_table(rows)}\n  {summary.json.resolve()}\n  {summary.csv.resolve()}")
    _say(f"  {summary.plot.resolve()}")
    if wandb_args is not None:
        log_frontier(rows, summary, wandb_args, out)
    return summary


def _selected(members: list[FamilyMember], member: int | None, family: Path) -> list[int]:
    if not members:
        raise FrontierError(f"--family {family}: the family has no members")
    if member is None:
        return list(range(len(members)))
    if not 0 <= member < len(members):
        raise FrontierError(
            f"--member {member}: {family} has {len(members)} members, 0 to {len(members) - 1}:\n"
            f"{describe_members(members)}"
        )
    return [member]


def result_path(out: Path, member: int, seed: int) -> Path:
    return Path(out) / "results" / f"member{member}-seed{seed}.json"


def retrain(
    config: Path,
    family: Path,
    member: int,
    seed: int,
    out: Path,
    overrides: Sequence[str],
    uses_wandb: bool,
) -> RunResult:
    """One ``fit`` through the CLI (resumed from its last.ckpt if an earlier try was cut short),
    then ``test`` of the checkpoint with the best validation accuracy."""
    name = f"member{member}-seed{seed}"
    args = ["fit", "--config", str(config), *overrides]
    args += ["--model.init_args.genotype", f"{family}#{member}", "--seed_everything", str(seed)]
    args += ["--run_name", name, "--trainer.default_root_dir", str(out / "runs")]
    last = out / "runs" / name / "checkpoints" / "last.ckpt"
    if last.is_file():
        args += ["--ckpt_path", str(last)]
    cli = cli_main(args)
    try:
        tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best")
    finally:
        if uses_wandb:
            import wandb

            wandb.finish()  # the next run's WandbLogger would otherwise reuse this W&B run
    best = cli.trainer.checkpoint_callback
    return RunResult(
        member=member,
        seed=seed,
        genotype=cli.model.genotype,
        test_acc=float(tested[0]["test/acc"]),
        best_val_acc=float(best.best_model_score),
        checkpoint=str(Path(best.best_model_path).resolve()),
        **cli.model.costs(),
    )


def resolved_config(config: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """The run config as the CLI resolves it (``--print_config``): bad settings fail here, before
    any training, and the checks below see what the runs will see."""
    if not config.is_file():
        raise FrontierError(f"--config {config}: no such file")
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            cli_main(["fit", "--config", str(config), *overrides, "--print_config"])
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
    return yaml.safe_load(printed.getvalue())


def _check_recipe(resolved: dict[str, Any], config: Path) -> dict[str, Any] | None:
    """Refuse configs whose runs could not be tested at their best epoch; return the W&B logger's
    init args when the runs log to W&B (the summary goes there too)."""
    if not str(resolved["model"]["class_path"]).endswith("RetrainModule"):
        raise FrontierError(
            f"--config {config}: the model is {resolved['model']['class_path']}; the frontier "
            "retrains with hyperdarts.modules.RetrainModule (see configs/*_retrain.yaml)"
        )
    checkpoint, trainer = resolved["checkpoint"], resolved["trainer"]
    untestable = checkpoint.get("save_top_k") == 0 or trainer.get("fast_dev_run")
    if not checkpoint.get("monitor") or untestable:
        raise FrontierError(
            f"--config {config}: the frontier tests each run's best checkpoint; set "
            "checkpoint: {monitor: val/acc, mode: max, save_top_k: 1} (as configs/*_retrain.yaml "
            "do) and no trainer.fast_dev_run"
        )
    logger_config = trainer.get("logger")
    loggers = logger_config if isinstance(logger_config, list) else [logger_config]
    for logger in loggers:
        if isinstance(logger, dict) and str(logger.get("class_path")).endswith("WandbLogger"):
            return logger.get("init_args") or {}
    return None


def _header(
    family: Path, config: Path, overrides: Sequence[str], meta: dict[str, Any]
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "family": str(family),
        "config": str(config),
        "overrides": list(overrides),
        "family_meta": meta,
    }


def _say(text: str) -> None:
    if rank_zero_only.rank == 0:
        print(text)


# --- the summary ----------------------------------------------------------------------------------


def collect(out: str | Path, members: list[FamilyMember]) -> list[FrontierRow]:
    """Every recorded result under ``out``, grouped by member (members without results omitted).

    A result whose genotype is not its member's comes from another family: refused, so that two
    families never mix in one frontier.
    """
    by_member: dict[int, list[RunResult]] = {}
    for path in sorted((Path(out) / "results").glob("member*-seed*.json")):
        result = RunResult.load(path)
        known = 0 <= result.member < len(members)
        if not known or members[result.member].genotype != result.genotype:
            raise FrontierError(
                f"{path} was trained on another architecture than member {result.member} of this "
                "family: the output directory belongs to another family; pass a new --out"
            )
        by_member.setdefault(result.member, []).append(result)
    return [
        FrontierRow(i, members[i], tuple(sorted(runs, key=lambda r: r.seed)))
        for i, runs in sorted(by_member.items())
    ]


def write_frontier(
    rows: list[FrontierRow], out: str | Path, header: dict[str, Any]
) -> FrontierFiles:
    out = Path(out)
    data = {**header, "members": [row.to_dict() for row in rows]}
    return FrontierFiles(
        json=atomic_write_text(out / "frontier.json", json.dumps(data, indent=2) + "\n"),
        csv=save_frontier_csv(rows, out / "frontier.csv"),
        plot=plot_frontier(rows, out / "frontier.png"),
    )


def save_frontier_csv(rows: list[FrontierRow], path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        d = row.to_dict()
        writer.writerow(
            [
                row.member,
                f"{row.family.lam:.6g}",
                d["params"],
                d["flops"],
                row.family.params,
                row.family.flops,
                " ".join(str(s) for s in d["seeds"]),
                " ".join(f"{a:.6f}" for a in row.test_accs),
                f"{row.mean:.6f}",
                "" if row.std is None else f"{row.std:.6f}",
                genotype_string(row.family.genotype),
            ]
        )
    return atomic_write_text(path, buffer.getvalue())


def plot_frontier(rows: list[FrontierRow], path: Path) -> Path:
    """Test accuracy (mean ± std over seeds) against parameters, each point labelled with its λ."""
    if not rows:
        raise ValueError("plot_frontier: no results to plot")
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    ordered = sorted(rows, key=lambda r: r.runs[0].params)
    xs = [r.runs[0].params for r in ordered]
    ys = [r.mean for r in ordered]
    errors = [r.std or 0.0 for r in ordered]
    ax.errorbar(xs, ys, yerr=errors, fmt="o-", capsize=4, color="tab:blue")
    for row, x, y in zip(ordered, xs, ys):
        label = f"λ={row.family.lam:.3g}"
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    seeds = sorted({len(r.runs) for r in rows})
    ax.set_xlabel("parameters (retrained network)")
    ax.set_ylabel("test accuracy")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)))
    ax.set_title(f"Retrained family ({len(rows)} architectures, {'/'.join(map(str, seeds))} seeds)")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def format_frontier_table(rows: list[FrontierRow]) -> str:
    header = ("#", "λ", "params", "FLOPs", "seeds", "test acc")
    lines = [
        (
            str(r.member),
            f"{r.family.lam:.4g}",
            f"{r.runs[0].params:,}",
            si(r.runs[0].flops),
            str(len(r.runs)),
            f"{r.mean:.4f}" + ("" if r.std is None else f" ± {r.std:.4f}"),
        )
        for r in rows
    ]
    widths = [max(len(x[c]) for x in [header, *lines]) for c in range(len(header))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(x, widths)) for x in [header, *lines])


def log_frontier(
    rows: list[FrontierRow], files: FrontierFiles, wandb_args: dict[str, Any], out: Path
) -> None:
    """The frontier as a W&B table and plot, in its own run of the config's project."""
    default_wandb_offline()
    import wandb  # only where W&B is used: importing it is slow

    columns = ["member", "lambda", "params", "flops", "test_acc_mean", "test_acc_std", "seeds"]
    data = [
        [r.member, r.family.lam, r.runs[0].params, r.runs[0].flops, r.mean, r.std, len(r.runs)]
        for r in rows
    ]
    run = wandb.init(
        project=wandb_args.get("project"),
        entity=wandb_args.get("entity"),
        mode="offline" if wandb_args.get("offline") else None,
        dir=str(out),
        name=f"frontier-{Path(out).name}",
        job_type="frontier",
    )
    try:
        table = wandb.Table(columns=columns, data=data)
        run.log({"frontier/table": table, "frontier/plot": wandb.Image(str(files.plot))})
    finally:
        run.finish()


# --- command line ---------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m hyperdarts frontier",
        description="Retrain every member of an architecture family (or one) over seeds and "
        "write the accuracy-size frontier. LightningCLI arguments after `--` apply to every run, "
        "e.g. `-- --trainer.accelerator gpu`.",
    )
    parser.add_argument("--family", type=str, required=True, help="a search's family.json")
    parser.add_argument(
        "--config", type=str, required=True, help="the retraining config, e.g. a *_retrain.yaml"
    )
    parser.add_argument(
        "--member", type=int | None, default=None, help="retrain only this member (its index)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed")
    parser.add_argument(
        "--out",
        type=str | None,
        default=None,
        help="output directory (default: frontier-<config name> next to the family file)",
    )
    return parser


def main(argv: Sequence[str]) -> FrontierFiles | None:
    """``python -m hyperdarts frontier ARGV``; errors a user can fix print their message alone."""
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    own, overrides = argv[:split], argv[split + 1 :]
    args = build_parser().parse_args(own)
    try:
        return run_frontier(args.family, args.config, args.member, args.seeds, args.out, overrides)
    except HyperDARTSError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
