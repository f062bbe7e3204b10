"""Multi-process (DDP) support for the search: what Lightning's DDP does not do by itself.

The search takes two backward passes per training step, one per optimizer: the architecture pass
reaches only the hypernetwork θ, the weight pass only the supernet's weights w. DDP's gradient
reducer expects every parameter it manages in every backward pass, so plain ``ddp`` fails on θ's
pass ("parameters that were not used"); ``find_unused_parameters=True`` would make it pass, at the
price of a graph traversal and an all-reduce of zeros for all of w on every architecture pass.
Instead, θ is kept out of the reducer (``exclude_from_ddp``), so DDP synchronizes exactly the
weight gradients, and the architecture gradient is averaged explicitly with the strategy's
``reduce`` before the hypernetwork's optimizer steps (``average_gradients``). With θ excluded,
DDP no longer broadcasts it when it wraps the model, so ``broadcast_parameters`` does that once
when fit starts: a run whose ranks were initialized differently still starts from rank zero's θ.

All three are no-ops in a single process, so the module calls them unconditionally.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from lightning.pytorch.strategies import Strategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def exclude_from_ddp(model: nn.Module, *submodules: str) -> None:
    """Keep the parameters and buffers of ``model.<submodule>`` out of DDP's gradient reducer and
    its broadcasts (at wrapping, and of buffers before every training forward).

    Must run before the strategy wraps ``model`` (e.g. in ``__init__``); names are relative to
    the module that DDP wraps, which in Lightning is the LightningModule itself. One call names
    them all: a later call replaces the list.
    """
    names = []
    for prefix in submodules:
        child = model.get_submodule(prefix)
        names += [f"{prefix}.{n}" for n, _ in child.named_parameters()]
        names += [f"{prefix}.{n}" for n, _ in child.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)


def average_gradients(params: Iterable[torch.Tensor], strategy: Strategy) -> None:
    """Replace each parameter's gradient by its mean over all ranks, in one all-reduce.

    A missing gradient counts as zero, so that every rank contributes the same flat layout (a
    rank whose gradient were ``None`` would otherwise reduce a shorter tensor and hang or mix
    values). Non-finite values propagate into the mean, so every rank sees them and any
    skip-the-step decision taken afterwards is the same on all ranks.
    """
    params = list(params)
    if getattr(strategy, "world_size", 1) <= 1 or not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    flat = strategy.reduce(flat, reduce_op="mean")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


@torch.no_grad()
def broadcast_parameters(params: Iterable[torch.Tensor], strategy: Strategy, src: int = 0) -> None:
    """Copy rank ``src``'s ``params`` to every rank, as DDP does for the parameters it manages."""
    if getattr(strategy, "world_size", 1) <= 1 or not torch.distributed.is_initialized():
        return
    for p in params:
        torch.distributed.broadcast(p.data, src=src)
