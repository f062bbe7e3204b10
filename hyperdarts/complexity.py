"""Complexity of architectures: exact counts of a discrete network and the expected complexity of
the relaxed supernet, C(p) = Σ_cells Σ_edges Σ_o p_o · cost(o on that edge), normalized.

Costs are those of the op as the evaluation network builds it (affine BN), at the channels, stride
and feature-map size of its edge in the supernet, so the same definitions serve search and
retraining. Only α-dependent parts are counted (the stem, preprocessing and classifier are a
constant offset). The normalizer is the costliest point of the relaxed space: every edge holding its
most expensive op. Hence C ∈ [0, 1] whatever the network's width and depth, and λ ranges transfer.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hyperdarts.errors import ConfigError
from hyperdarts.search_space.cells import MixedOp, edge_inputs
from hyperdarts.search_space.networks import CELL_TYPES, SuperNet
from hyperdarts.search_space.ops import build_op

ComplexityMetric = Literal["params", "flops"]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass (convolutions and matmuls, 2 per multiply-add) at batch 1."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.zeros(1, *input_shape))
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def op_cost(name: str, channels: int, stride: int, size: int, metric: ComplexityMetric) -> int:
    op = build_op(name, channels, stride, affine=True)
    if metric == "params":
        return count_parameters(op)
    return count_flops(op, (channels, size, size))


def edge_input_sizes(net: SuperNet, image_size: int) -> list[list[int]]:
    """Spatial size of each mixed op's input, per cell, read off one forward of the supernet."""
    sizes: dict[MixedOp, int] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: sizes.__setitem__(mod, args[0].shape[-1]))
        for m in net.modules()
        if isinstance(m, MixedOp)
    ]
    n_ops = len(net.primitives)
    uniform = {ct: torch.full((len(net.cells[0].edges), n_ops), 1.0 / n_ops) for ct in CELL_TYPES}
    first = net.stem[0]
    try:
        with torch.no_grad():
            net(torch.zeros(2, first.in_channels, image_size, image_size), uniform)  # BN needs 2
    finally:
        for h in hooks:
            h.remove()
    return [[sizes[edge] for edge in cell.edges] for cell in net.cells]


def cost_tables(
    net: SuperNet, image_size: int, metric: ComplexityMetric = "params"
) -> dict[str, torch.Tensor]:
    """cost[cell_type][edge, op], summed over all cells of that type (they share α)."""
    sizes = edge_input_sizes(net, image_size)
    num_edges = len(net.cells[0].edges)
    tables = {
        ct: torch.zeros(num_edges, len(net.primitives), dtype=torch.float64) for ct in CELL_TYPES
    }
    sources = [src for src, _ in edge_inputs(net.num_nodes)]
    cache: dict[tuple, int] = {}
    for cell, cell_sizes in zip(net.cells, sizes):
        table = tables["reduce" if cell.reduction else "normal"]
        channels = cell.preprocess1[1].out_channels
        for e, size in enumerate(cell_sizes):
            stride = 2 if cell.reduction and sources[e] < 2 else 1
            for k, name in enumerate(net.primitives):
                key = (name, channels, stride, size)
                if key not in cache:
                    cache[key] = op_cost(name, channels, stride, size, metric)
                table[e, k] += cache[key]
    return tables


class ExpectedComplexity(nn.Module):
    """Differentiable, normalized expected complexity of the relaxed supernet."""

    def __init__(self, tables: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for ct in CELL_TYPES:
            self.register_buffer(f"cost_{ct}", tables[ct].float(), persistent=False)
        total = sum(tables[ct].max(dim=-1).values.sum() for ct in CELL_TYPES)
        if total <= 0:
            raise ConfigError(
                "every operation in the search space costs nothing: nothing to control"
            )
        self.normalizer = float(total)

    def raw(self, probs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Expected cost in parameters (or FLOPs); per-example weights are averaged."""
        total = 0
        for ct in CELL_TYPES:
            p = probs[ct]
            if p.dim() == 3:
                p = p.mean(dim=0)
            total = total + (p * getattr(self, f"cost_{ct}").to(p.dtype)).sum()
        return total

    def forward(self, probs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.raw(probs) / self.normalizer
