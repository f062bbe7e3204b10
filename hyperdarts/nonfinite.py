"""Steps with a non-finite loss or gradient: skipped before they change anything, counted, and
fatal when they keep coming.

One NaN batch (a corrupt image, an overflow at a large learning rate) would otherwise poison every
weight through the optimizer step, and every later checkpoint with it. Here the step is checked
after its backward pass and before the optimizer step; a bad step leaves parameters, optimizer
state and BatchNorm statistics as they were. A run whose steps keep failing stops instead of
skipping forever, and the last good checkpoint stays (a checkpoint is never written non-finite).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from hyperdarts.errors import ConfigError, HyperDARTSError


class NonFiniteError(HyperDARTSError, FloatingPointError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def is_finite_step(loss: torch.Tensor, parameters: Iterable[torch.Tensor]) -> bool:
    """Whether the loss and every gradient of ``parameters`` are finite (one device sync)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    finite = torch.isfinite(loss.detach()).all()
    if grads:
        finite = finite & torch.isfinite(torch.nn.utils.get_total_norm(grads))
    return bool(finite)


def buffer_snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    """Copies of the module's buffers: a forward pass in training mode updates BatchNorm's running
    statistics, which a skipped step must undo."""
    return [b.detach().clone() for b in module.buffers()]


def restore_buffers(module: torch.nn.Module, snapshot: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for buffer, saved in zip(module.buffers(), snapshot, strict=True):
            buffer.copy_(saved)


class StepGuard:
    """Counts skipped steps and stops the run after ``max_consecutive`` of them in a row.

    Its counters belong in checkpoints (``state_dict``), so a resumed run counts on.
    """

    def __init__(self, max_consecutive: int) -> None:
        if max_consecutive < 1:
            raise ConfigError(
                f"max_consecutive_skips={max_consecutive}: must be >= 1 (how many optimizer "
                "steps in a row may be skipped for a non-finite loss or gradient)"
            )
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def record(self, finite: bool, step: str, last_checkpoint: str | None = None) -> None:
        """Count a taken (``finite``) or skipped step; ``step`` says which, for the messages."""
        if finite:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        rank_zero_warn(
            f"hyperdarts: skipped the {step}: non-finite loss or gradient "
            f"({self.consecutive} in a row, {self.total} in all)"
        )
        if self.consecutive >= self.max_consecutive:
            kept = f" The last good checkpoint is {last_checkpoint}." if last_checkpoint else ""
            raise NonFiniteError(
                f"{self.consecutive} optimizer steps in a row had a non-finite loss or gradient "
                f"(the last: the {step}); the run stopped, nothing non-finite was saved.{kept} "
                "Check the data for NaN or infinite values, lower the learning rates or the "
                "gradient clipping threshold and start again, or allow more skips "
                "(max_consecutive_skips)"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consecutive = int(state["consecutive"])
        self.total = int(state["total"])
