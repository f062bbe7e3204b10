"""Checkpoints a run can rely on: read with clear errors, checked against the configured model,
written whole and finite, saved on preemption signals, and frequent enough to resume mid-epoch."""

from __future__ import annotations

import io
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from hyperdarts.errors import ConfigError, HyperDARTSError
from hyperdarts.io import atomic_write_bytes
from hyperdarts.search_space.ops import PRIMITIVES

# Settings that define what a model's tensors mean; a mismatch with the same tensor shapes
# (another primitive order, another λ range) would otherwise derive wrong architectures silently.
SPACE_KEYS = (
    "num_channels",
    "image_size",
    "num_classes",
    "init_channels",
    "num_cells",
    "num_nodes",
    "stem_multiplier",
    "primitives",
    "lambda_min",
    "lambda_max",
    "hypernet",
    "complexity",
)
_SHOWN = 5  # differences listed per kind in an error message
# What training wrote into a checkpoint. Elsewhere infinities are legitimate (a ModelCheckpoint's
# initial best score is ±inf).
TRAINED_STATE = ("state_dict", "optimizer_states")


class CheckpointError(HyperDARTSError, ValueError):
    """A checkpoint that is missing, unreadable, from another search space, or not finite."""


# --- reading and checking -------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``, or a CheckpointError that says what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"--ckpt_path {path}: no such file; give a checkpoint file, e.g. "
            "runs/<config>/<run>/checkpoints/last.ckpt, or `last` to resume the newest run"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling a foreign file can raise anything (IndexError, …)
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"--ckpt_path {path}: not a readable checkpoint ({type(err).__name__}: {first_line}); "
            "a write cut short leaves a truncated file: use an earlier checkpoint of the run"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"--ckpt_path {path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def check_class(checkpoint: dict[str, Any], class_path: str, path: str | Path) -> None:
    """Refuse a checkpoint of another module class (a search's given to a retraining config)."""
    saved = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if saved and _class_name(saved) != _class_name(class_path):
        raise CheckpointError(
            f"--ckpt_path {path} holds a {_class_name(saved)}, but the config's model is a "
            f"{_class_name(class_path)}; use the config the checkpoint was made with (its run "
            "directory holds it)"
        )


def _class_name(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def check_compatible(model: L.LightningModule, checkpoint: dict[str, Any], path: Path) -> None:
    """Compare model class, search-space settings and state-dict keys and shapes with the model;
    name every difference. A model may add its own check, ``check_checkpoint(checkpoint)``."""
    saved = checkpoint.get("hyper_parameters") or {}
    check_class(checkpoint, type(model).__name__, path)
    problems = _setting_differences(model.hparams, saved)
    problems += _tensor_differences(model.state_dict(), checkpoint["state_dict"])
    if problems:
        raise CheckpointError(
            f"--ckpt_path {path} comes from a different search space than the configured model:\n"
            + "\n".join(f"  {p}" for p in problems)
            + "\nConfigure the model as the run was (its run directory holds the config)."
        )
    extra_check = getattr(model, "check_checkpoint", None)
    if extra_check is not None:
        extra_check(checkpoint)


def _setting_differences(current: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    shared = [key for key in SPACE_KEYS if key in saved and key in current]
    return [
        f"{key}: checkpoint {saved[key]!r}, model {current[key]!r}"
        for key in shared
        if _canonical(key, saved[key]) != _canonical(key, current[key])
    ]


def _canonical(key: str, value: Any) -> Any:
    if key == "primitives":
        return tuple(value or PRIMITIVES)
    return tuple(value) if isinstance(value, list) else value


def _tensor_differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    reshaped = [
        f"{k}: checkpoint {tuple(found[k].shape)}, model {tuple(expected[k].shape)}"
        for k in sorted(expected.keys() & found.keys())
        if found[k].shape != expected[k].shape
    ]
    return (
        _listed("missing from the checkpoint", missing)
        + _listed("not in the model", unexpected)
        + _listed("shape differs", reshaped)
    )


def _listed(what: str, items: list[str]) -> list[str]:
    if not items:
        return []
    more = [f"  ... and {len(items) - _SHOWN} more"] if len(items) > _SHOWN else []
    return [f"{what} ({len(items)}):", *(f"  {item}" for item in items[:_SHOWN]), *more]


# --- writing --------------------------------------------------------------------------------------


def non_finite_entries(tree: Any, prefix: str = "") -> Iterator[str]:
    """Where a nested structure holds a floating-point tensor or number that is NaN or infinite."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from non_finite_entries(value, f"{prefix}{key}.")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from non_finite_entries(value, f"{prefix}{i}.")
    elif isinstance(tree, torch.Tensor) and tree.is_floating_point():
        if not bool(torch.isfinite(tree).all()):
            yield prefix.rstrip(".")
    elif isinstance(tree, float) and not abs(tree) < float("inf"):
        yield prefix.rstrip(".")


class SafeCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint whole or not at all, and never one holding a NaN or an infinity.

    Lightning's own writer renames a file from the system's temporary directory, which is a copy
    (that a crash can cut short) when the run directory is on another file system.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        bad = [
            key
            for part in TRAINED_STATE
            for key in non_finite_entries(checkpoint.get(part), f"{part}.")
        ]
        if bad:
            more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
            listed = ", ".join(bad[:_SHOWN]) + more
            raise CheckpointError(
                f"refusing to write {path}: non-finite values in {listed}; the earlier checkpoints "
                "are kept. The run diverged: check the data, lower the learning rates and start "
                "again, or resume from the last checkpoint"
            )
        if storage_options is not None or not _is_local_file_protocol(str(path)):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())


# --- when to save ---------------------------------------------------------------------------------


class ResumableCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, made to always leave a recent last.ckpt to resume from.

    Lightning's writes last.ckpt only together with a top-k checkpoint, so a search (save_top_k=0)
    had nothing to resume from until it ended. This one also writes it

    - at every epoch's end, after the epoch-end hooks;
    - every ``last_every_n_train_steps`` optimizer steps within an epoch (0: never; a search makes
      two steps per batch). Not after an epoch's last batch: the epoch-end save follows, and a
      restart from before the epoch-end hooks would skip them;
    - when the process gets SIGTERM or SIGUSR1 (what clusters send before preempting a job), after
      the batch that is running.

    Args:
        last_every_n_train_steps: mid-epoch saves of last.ckpt, so that a crash loses at most this
            many steps. Independent of ``every_n_train_steps`` (Lightning's, for top-k
            checkpoints), which would turn off the per-epoch checkpoints.
        **kwargs: ModelCheckpoint's arguments.
    """

    def __init__(self, last_every_n_train_steps: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if last_every_n_train_steps < 0:
            raise ConfigError(
                f"checkpoint.last_every_n_train_steps={last_every_n_train_steps}: must be >= 0 "
                "(0: last.ckpt at epoch ends only)"
            )
        if last_every_n_train_steps and not self.save_last:
            raise ConfigError(
                "checkpoint.last_every_n_train_steps writes last.ckpt: set checkpoint.save_last: "
                "true, or last_every_n_train_steps: 0"
            )
        self.last_every_n_train_steps = last_every_n_train_steps

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        treat_sigusr1_as_sigterm()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.last_every_n_train_steps
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if n and trainer.global_step % n == 0 and not last_batch:
            self._save_last_now(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_now(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            self._save_on_signal(trainer)
        super().on_exception(trainer, pl_module, exception)  # Lightning's save_on_exception

    def _save_last_now(self, trainer: L.Trainer) -> None:
        """last.ckpt, unless save_last is off or this step is saved already."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_on_signal(self, trainer: L.Trainer) -> None:
        """last.ckpt, or without save_last a checkpoint named like the others: a preempted run
        must leave something to resume from."""
        if self.save_last:
            self._save_last_now(trainer)
        elif not self._should_skip_saving_checkpoint(trainer):
            name = self.format_checkpoint_name(self._monitor_candidates(trainer))
            self._save_checkpoint(trainer, name)
        saved = self.last_model_path if self.save_last else self._last_checkpoint_saved
        if trainer.is_global_zero:
            resume = "last" if self.save_last else saved
            print(
                f"hyperdarts: stopped by a signal, state saved to {saved}; resume with "
                f"--ckpt_path {resume}",
                file=sys.stderr,
            )


def treat_sigusr1_as_sigterm() -> None:
    """Let SIGUSR1 stop the run as SIGTERM does (checkpoint at the next batch boundary).

    Lightning handles SIGUSR1 only under SLURM with auto-requeue; anywhere else its default action
    kills the process with nothing saved. A handler someone else installed is left alone. Lightning
    restores the previous handlers when fit ends.
    """
    usr1 = getattr(signal, "SIGUSR1", None)
    if usr1 is None or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(usr1) in (signal.SIG_DFL, None):
        signal.signal(usr1, signal.getsignal(signal.SIGTERM))


# --- random number generators ---------------------------------------------------------------------


def global_rng_states() -> dict[str, Any]:
    """The global torch generators (CPU, and CUDA when in use): what drop path draws from."""
    states: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_global_rng(states: dict[str, Any]) -> None:
    """Undo global_rng_states; CUDA states only onto as many devices as they were saved from."""
    torch.set_rng_state(states["cpu"])
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
