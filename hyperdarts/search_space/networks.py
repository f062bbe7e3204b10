"""The DARTS supernet: stem, L search cells (reductions at L/3 and 2L/3), pooling, classifier."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from hyperdarts.errors import ConfigError
from hyperdarts.search_space.cells import SearchCell
from hyperdarts.search_space.ops import PRIMITIVES, validate_primitives

CELL_TYPES: tuple[str, str] = ("normal", "reduce")


def reduction_layers(num_cells: int) -> tuple[int, int]:
    """Cells that halve the resolution and double the channels, as in DARTS."""
    return num_cells // 3, 2 * num_cells // 3


def validate_space(
    num_cells: int, num_nodes: int, init_channels: int, stem_multiplier: int, image_size: int
) -> None:
    """Fail before any training with the field that is wrong and how to fix it."""
    if num_cells < 3:
        raise ConfigError(
            f"num_cells={num_cells}: need at least 3 so that the reductions at L/3 and 2L/3 "
            "leave at least one normal cell"
        )
    if num_nodes < 2:
        raise ConfigError(f"num_nodes={num_nodes}: a cell needs at least 2 intermediate nodes")
    if init_channels < 1 or init_channels % 2:
        raise ConfigError(
            f"init_channels={init_channels}: must be a positive even number (reductions split "
            "channels in two)"
        )
    if stem_multiplier < 1:
        raise ConfigError(f"stem_multiplier={stem_multiplier}: must be >= 1")
    if image_size < 4:
        raise ConfigError(f"image_size={image_size}: two reductions need images of at least 4x4")


class SuperNet(nn.Module):
    """Every edge of every cell holds all candidate ops; the mixing weights are an input."""

    def __init__(
        self,
        num_channels: int,
        num_classes: int,
        image_size: int = 32,
        init_channels: int = 16,
        num_cells: int = 8,
        num_nodes: int = 4,
        stem_multiplier: int = 3,
        primitives: tuple[str, ...] | list[str] = PRIMITIVES,
        share_source_ops: bool = True,
        group_ops: bool = True,
        channels_last: bool = False,
        checkpoint_cells: bool = False,
    ) -> None:
        """``share_source_ops`` and ``group_ops`` select the cells' fast paths (see SearchCell):
        they change the cost only, not the outputs, gradients or state dict, and exist so the
        speed-up can be measured and the plain per-edge loop restored. ``channels_last`` stores
        conv weights and activations NHWC, the layout GPU convolution kernels (cuDNN, tensor
        cores) are fastest in; values and state dict keys are unchanged. ``checkpoint_cells`` keeps
        only each cell's inputs for backward and recomputes the cell during backward
        (torch.utils.checkpoint): the activations of one cell instead of all, for about one more
        forward per pass. It saves nothing when the graph is kept for a second backward (the
        exact Hessian's training pass), which holds the recomputed activations."""
        super().__init__()
        validate_space(num_cells, num_nodes, init_channels, stem_multiplier, image_size)
        self.primitives = validate_primitives(primitives)
        self.num_nodes = num_nodes
        c_stem = stem_multiplier * init_channels
        self.stem = nn.Sequential(
            nn.Conv2d(num_channels, c_stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_stem, affine=False, track_running_stats=False),
        )
        reductions = reduction_layers(num_cells)
        c_pp, c_p, c = c_stem, c_stem, init_channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(num_cells):
            reduction = i in reductions
            if reduction:
                c *= 2
            self.cells.append(
                SearchCell(
                    num_nodes,
                    c_pp,
                    c_p,
                    c,
                    reduction,
                    reduction_prev,
                    self.primitives,
                    share_source_ops=share_source_ops,
                    group_ops=group_ops,
                )
            )
            reduction_prev = reduction
            c_pp, c_p = c_p, num_nodes * c
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)
        self.channels_last = channels_last
        self.checkpoint_cells = checkpoint_cells
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """``weights[cell_type]``: (edges, ops), or (batch, edges, ops) with per-example noise.

        Without autograd (evaluation), ops whose weight is exactly zero are skipped: a one-hot
        choice then costs what the discrete architecture costs. With autograd every op runs, since
        a zero weight still has a gradient.
        """
        active = None if torch.is_grad_enabled() else _active_ops(weights)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        s0 = s1 = self.stem(x)
        recompute = self.checkpoint_cells and torch.is_grad_enabled()
        for cell in self.cells:
            kind = "reduce" if cell.reduction else "normal"
            if recompute:
                out = _checkpointed(cell, s0, s1, weights[kind])
            else:
                out = cell(s0, s1, weights[kind], None if active is None else active[kind])
            s0, s1 = s1, out
        return self.classifier(self.pool(s1).flatten(1))


def _checkpointed(
    cell: nn.Module, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The cell, its activations recomputed in backward. The parameters it runs with are inputs
    of the recomputation: under functional_call (the unrolled step's w', w ± εv) the module holds
    other tensors again by the time backward recomputes. A cell has no randomness of its own (the
    noise is in the mixing weights), so no RNG state is saved. Parameters that do not require
    grad now (first order freezes w for its pass) are detached, so that they still do not when
    backward recomputes: the recomputation must save what the forward saved."""
    names, tensors = zip(
        *((k, p if p.requires_grad else p.detach()) for k, p in cell.named_parameters())
    )

    def run(s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, *tensors: torch.Tensor):
        return functional_call(cell, dict(zip(names, tensors)), (s0, s1, weights))

    return checkpoint(run, s0, s1, weights, *tensors, use_reentrant=False, preserve_rng_state=False)


def _active_ops(weights: dict[str, torch.Tensor]) -> dict[str, list[list[bool]]]:
    """Per cell type, edge and op: is any weight nonzero? One host sync per cell type."""
    out = {}
    for kind, w in weights.items():
        nonzero = w != 0
        if nonzero.dim() == 3:
            nonzero = nonzero.any(dim=0)
        out[kind] = nonzero.tolist()
    return out
