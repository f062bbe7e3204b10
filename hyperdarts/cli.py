"""The command line: ``python -m hyperdarts fit --config configs/digits.yaml``.

A LightningCLI whose configs choose the model and data module by ``class_path``. The data module's
image shape and class count are linked into the model, so configs never repeat them. Every run gets
its own directory ``<trainer.default_root_dir>/<run_name>`` holding its resolved config, its
checkpoints and its W&B files; a new run never writes into an earlier run's directory.
``--ckpt_path last`` resumes the newest run under the same root (or ``--run_name``'s), exactly: the
checkpoint holds all the run depends on (hyperdarts.checkpoints). A checkpoint is checked before
Lightning reads it: a missing, truncated or foreign one ends with a message, not a stack trace.
"""

from __future__ import annotations

import netrc
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import lightning as L  # noqa: E402
from jsonargparse import Namespace  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback  # noqa: E402
from lightning.pytorch.plugins.io import TorchCheckpointIO  # noqa: E402
from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: E402

from hyperdarts.checkpoints import (  # noqa: E402
    ResumableCheckpoint,
    SafeCheckpointIO,
    check_class,
    check_compatible,
    read_checkpoint,
)
from hyperdarts.data import ImageDataModule  # noqa: E402
from hyperdarts.errors import ConfigError, HyperDARTSError  # noqa: E402
from hyperdarts.trainer import HyperDARTSTrainer  # noqa: E402

RUN_DIR_ENV = "HYPERDARTS_RUN_DIR"  # lets DDP's relaunched ranks reuse rank zero's run directory
LINKED = ("num_channels", "image_size", "num_classes")
CKPT_KEYWORDS = ("best", "last", "hpc", "registry")  # ckpt_path values Lightning resolves itself
INTERRUPTED = 128 + signal.SIGTERM  # exit status of a run stopped by a signal (checkpoint saved)


class RunConfigCallback(SaveConfigCallback):
    """Writes the resolved config into the run's own directory, never over an earlier file."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            run_dir = Path(trainer.default_root_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            path = run_dir / self.config_filename
            n = 1
            while path.exists():  # a resumed run keeps the config it started with
                n += 1
                path = run_dir / f"{Path(self.config_filename).stem}-{n}.yaml"
            self.parser.save(self.config, str(path), skip_none=False, multifile=False)
        self.already_saved = True


class HyperDARTSCLI(LightningCLI):
    checkpoint: dict[str, Any] | None = None  # the --ckpt_path file, read once to check it
    resume_dir: Path | None = None  # the run `fit --ckpt_path last` continues

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "derive": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="This run's directory name under trainer.default_root_dir (default: a timestamp). "
            "Give the same name on every node of a multi-node run.",
        )
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0})
        for key in LINKED:
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Check the checkpoint file before Lightning loads it (a truncated file would end in a
        stack trace) and refuse one of another model class before Lightning's parser replaces the
        configured model's settings with the checkpoint's."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if subcommand == "fit" and config.get("ckpt_path") == "last":
            self.resume_dir = _resume_dir(config)
            config.ckpt_path = str(_last_checkpoint(self.resume_dir))
        path = config.get("ckpt_path")
        if path and path not in CKPT_KEYWORDS and not str(path).startswith("registry:"):
            self.checkpoint = read_checkpoint(path)
            if config.get("model") and config.model.get("class_path"):
                check_class(self.checkpoint, config.model.class_path, path)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "derive":  # writes next to the checkpoint it reads (or to --out)
            config.trainer.logger = False
            return
        self.run_dir = _resolve_run_dir(config, self.subcommand, self.resume_dir)
        config.trainer.default_root_dir = str(self.run_dir)
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(self.run_dir / "checkpoints")
        for logger in _logger_configs(config.trainer.logger):
            logger.init_args.save_dir = str(self.run_dir)
            if logger.class_path.endswith("WandbLogger"):
                logger.init_args.name = logger.init_args.get("name") or self.run_dir.name
                default_wandb_offline()

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """Lightning's Trainer, writing checkpoints atomically and only when finite (unless the
        config chose its own checkpoint IO)."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        return trainer

    def after_instantiate_classes(self) -> None:
        """Refuse a checkpoint of another search space (or data, or architecture) before any
        training; ``derive`` does its own check."""
        if self.checkpoint is not None and self.subcommand != "derive":
            path = Path(self.config[self.subcommand].ckpt_path)
            check_compatible(self.model, self.checkpoint, path)
        self.checkpoint = None  # Lightning loads the file again: do not hold it twice

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print(_summary(self.model, self.run_dir, self.trainer))


def _logger_configs(logger: Any) -> list[Namespace]:
    items = logger if isinstance(logger, list) else [logger]
    return [x for x in items if isinstance(x, Namespace) and "class_path" in x]


def _resolve_run_dir(config: Namespace, subcommand: str | None, resume_dir: Path | None) -> Path:
    root = Path(config.trainer.default_root_dir or "runs")
    if resume_dir is not None:
        run_dir = resume_dir
    elif config.get("run_name"):
        run_dir = root / config.run_name
        if subcommand == "fit" and not config.get("ckpt_path"):
            _refuse_earlier_run(run_dir)
    elif int(os.environ.get("LOCAL_RANK", "0")) > 0 and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])  # a rank that Lightning's DDP launcher started
    elif (job := _launcher_job_name()) is not None:
        run_dir = root / job  # every process of a torchrun or SLURM job derives the same name
    else:
        run_dir = root / time.strftime("run-%Y%m%d-%H%M%S")
        n = 1
        while run_dir.exists():
            n += 1
            run_dir = root / f"{time.strftime('run-%Y%m%d-%H%M%S')}-{n}"
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    return run_dir


def _launcher_job_name() -> str | None:
    """A run name that all processes of a job started by torchrun or srun share: they start
    together, so rank zero cannot hand them its timestamp as it does to the ranks Lightning's
    own launcher starts. None for a single process and for Lightning's launcher."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    torchrun_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if world_size > 1 and torchrun_id != "none":
        return f"run-torchrun-{torchrun_id[:8]}"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and os.environ.get("SLURM_JOB_ID"):
        step = os.environ.get("SLURM_STEP_ID", "0")
        return f"run-slurm-{os.environ['SLURM_JOB_ID']}.{step}"
    if world_size > 1:
        raise SystemExit(
            f"error: this process is one of {world_size} started together (WORLD_SIZE) without "
            "a job id they share; pass --run_name NAME, the same on every process, so that they "
            "write into one run directory"
        )
    return None


def _resume_dir(config: Namespace) -> Path:
    """The run ``--ckpt_path last`` continues: ``--run_name``'s, else the newest under the root."""
    root = Path(config.trainer.default_root_dir or "runs")
    return root / config.run_name if config.get("run_name") else _newest_resumable(root)


def _refuse_earlier_run(run_dir: Path) -> None:
    """A new fit must not overwrite the checkpoints or family of an earlier run of that name."""
    results = sorted(run_dir.glob("checkpoints/*.ckpt")) + sorted(run_dir.glob("family.json"))
    if results and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        raise ConfigError(
            f"--run_name {run_dir.name}: {run_dir} already holds a run ({results[0]}); resume it "
            "with --ckpt_path last, or give this run another --run_name"
        )


def _last_checkpoint(run_dir: Path) -> Path:
    path = run_dir / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise SystemExit(
            f"error: --ckpt_path last: {path} does not exist. Start this run without --ckpt_path, "
            "or pass the path of a checkpoint file."
        )
    return path


def _newest_resumable(root: Path) -> Path:
    candidates = sorted(root.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise SystemExit(
            f"error: --ckpt_path last: no earlier run under {root.resolve()} has "
            "checkpoints/last.ckpt. Start a new search without --ckpt_path, or pass the path of a "
            "checkpoint file."
        )
    return candidates[-1].parent.parent


def default_wandb_offline() -> None:
    """Without an API key W&B would fail (or ask): log offline instead, and say how to sync."""
    if os.environ.get("WANDB_MODE") or _has_wandb_key():
        return
    os.environ["WANDB_MODE"] = "offline"
    print(
        "hyperdarts: no W&B API key found, logging offline; upload later with "
        "`wandb sync <run dir>/wandb/offline-run-*`",
        file=sys.stderr,
    )


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def _summary(model: L.LightningModule, run_dir: Path, trainer: L.Trainer) -> str:
    lines = [f"\nhyperdarts: outputs in {run_dir.resolve()}"]
    ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        lines.append(f"  last checkpoint: {ckpt.resolve()}")
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")
    if best:
        lines.append(
            f"  best checkpoint ({trainer.checkpoint_callback.monitor}): {Path(best).resolve()}\n"
            "  evaluate it once on the test split: python -m hyperdarts test --config <config> "
            "--ckpt_path <best checkpoint>"
        )
    if hasattr(model, "sampler"):
        for lam in dict.fromkeys((model.val_grid[0], model.val_grid[-1])):  # once if equal
            derived = model.genotype_complexity(model.genotype(lam))
            lines.append(
                f"  λ={lam:<8.3g} derived architecture: complexity {derived:.3f} "
                f"(relaxed: {model.expected_complexity(lam):.3f})"
            )
    offline = sorted(Path(run_dir).glob("wandb/offline-run-*"))
    if offline:
        lines.append(
            f"  W&B offline run: {offline[-1].resolve()}  (upload: wandb sync {offline[-1]})"
        )
    return "\n".join(lines)


def main(args: list[str] | None = None) -> HyperDARTSCLI:
    """Run the CLI; errors a user can fix end with their message alone and exit status 2."""
    warnings.filterwarnings("ignore", module="jsonargparse")
    try:
        return HyperDARTSCLI(
            L.LightningModule,
            ImageDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigCallback,
            trainer_class=HyperDARTSTrainer,
            args=args,
            auto_configure_optimizers=False,
        )
    except SIGTERMException:  # the checkpoint callback saved and said how to resume
        raise SystemExit(INTERRUPTED) from None
    except Exception as err:
        cause = _user_error(err)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


def _user_error(err: BaseException | None) -> HyperDARTSError | None:
    """The user-fixable error behind ``err`` (jsonargparse wraps those raised in __init__)."""
    while err is not None:
        if isinstance(err, HyperDARTSError):
            return err
        err = err.__cause__ or err.__context__
    return None
