"""Search cells: a DAG of mixed operations whose mixing weights come from outside.

The cell does not own architecture parameters: the relaxation (a hypernetwork conditioned on λ)
produces the mixing weights once per forward and passes them in. This keeps the supernet a plain
function of (weights, mixing weights), which the unrolled second-order step needs.
"""

from __future__ import annotations

import torch
from torch import nn

from hyperdarts.search_space.ops import build_op, preprocess


def num_edges(num_nodes: int) -> int:
    """Node j (0-based among intermediate nodes) has 2 + j incoming edges: 14 for 4 nodes."""
    return sum(2 + j for j in range(num_nodes))


def edge_inputs(num_nodes: int) -> list[tuple[int, int]]:
    """(edge index → (source node, target node)), nodes numbered 0, 1 for the cell inputs."""
    pairs = []
    for j in range(num_nodes):
        pairs.extend((i, j + 2) for i in range(j + 2))
    return pairs


class MixedOp(nn.Module):
    """ō(x) = Σ_o p_o · o(x). ``none`` contributes exactly zero, so it is not computed."""

    def __init__(self, channels: int, stride: int, primitives: tuple[str, ...]) -> None:
        super().__init__()
        self.index = [k for k, name in enumerate(primitives) if name != "none"]
        self.ops = nn.ModuleList(
            build_op(primitives[k], channels, stride, affine=False) for k in self.index
        )

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, active: list[bool] | None = None
    ) -> torch.Tensor | None:
        """``weights``: (ops,) shared by the batch, or (batch, ops) for per-example sampling.

        ``active`` (evaluation only) marks the ops whose weight is not exactly zero: one-hot
        weights of a derived architecture then cost one op, not all of them. None when no op is
        active.
        """
        out = None
        for k, op in zip(self.index, self.ops):
            if active is not None and not active[k]:
                continue
            w = weights[..., k]
            if w.dim() == 1:
                w = w.view(-1, 1, 1, 1)
            out = w * op(x) if out is None else out + w * op(x)
        return out


class SearchCell(nn.Module):
    def __init__(
        self,
        num_nodes: int,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        primitives: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.num_nodes = num_nodes
        self.preprocess0, self.preprocess1 = preprocess(
            c_prev_prev, c_prev, channels, reduction_prev, affine=False
        )
        self.edges = nn.ModuleList(
            MixedOp(channels, 2 if reduction and src < 2 else 1, primitives)
            for src, _ in edge_inputs(num_nodes)
        )

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        weights: torch.Tensor,
        active: list[list[bool]] | None = None,
    ) -> torch.Tensor:
        """``weights``: (edges, ops) or (batch, edges, ops) mixing weights for this cell type;
        ``active``: per edge, the ops with nonzero weight (see MixedOp), or None for all."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        edge = 0
        for _ in range(self.num_nodes):
            first, node = edge, None
            for src in range(len(states)):
                mask = None if active is None else active[edge]
                out = self.edges[edge](states[src], weights[..., edge, :], mask)
                node = out if node is None else (node if out is None else node + out)
                edge += 1
            if node is None:  # every incoming weight is zero: the node is zero
                node = self.edges[first](states[0], weights[..., first, :]).mul(0.0)
            states.append(node)
        return torch.cat(states[2:], dim=1)
