"""Search cells: a DAG of mixed operations whose mixing weights come from outside.

The cell does not own architecture parameters: the relaxation (a hypernetwork conditioned on λ)
produces the mixing weights once per forward and passes them in. This keeps the supernet a plain
function of (weights, mixing weights), which the unrolled second-order step needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hyperdarts.errors import ConfigError
from hyperdarts.search_space.ops import (
    build_op,
    can_group,
    grouped_forward_after_relu,
    preprocess,
)


def num_edges(num_nodes: int) -> int:
    """Node j (0-based among intermediate nodes) has 2 + j incoming edges: 14 for 4 nodes."""
    return sum(2 + j for j in range(num_nodes))


def edge_inputs(num_nodes: int) -> list[tuple[int, int]]:
    """(edge index → (source node, target node)), nodes numbered 0, 1 for the cell inputs."""
    pairs = []
    for j in range(num_nodes):
        pairs.extend((i, j + 2) for i in range(j + 2))
    return pairs


class SourceInputs:
    """What the edges leaving one node can share within one forward of a cell.

    All edges from a node read the same tensor at the same stride, so a parameter-free op (a
    pool with its BN without affine parameters or running statistics, the identity) gives the
    same output on every such edge, and the ReLU that starts every conv op (and
    FactorizedReduce) gives the same ``relu(x)``. Computing them once per source instead of once
    per edge turns 14 pool/skip evaluations per 4-node cell into at most 6 (sources 0..5 feed
    4, 4, 3, 2, 1 edges). Autograd sums the edges' gradients into the shared output before its
    backward, which is the same chain rule the per-edge ops apply. Everything is computed
    lazily, so the evaluation mask still skips work that no active op needs.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self._relu: torch.Tensor | None = None
        self.free: dict[tuple[int, int], torch.Tensor] = {}
        self.grouped: dict[tuple[nn.Module, int], torch.Tensor] = {}

    def relu(self) -> torch.Tensor:
        if self._relu is None:
            self._relu = F.relu(self.x)
        return self._relu


class MixedOp(nn.Module):
    """ō(x) = Σ_o p_o · o(x). ``none`` contributes exactly zero, so it is not computed."""

    def __init__(self, channels: int, stride: int, primitives: tuple[str, ...]) -> None:
        super().__init__()
        self.stride = stride
        self.index = [k for k, name in enumerate(primitives) if name != "none"]
        self.ops = nn.ModuleList(
            build_op(primitives[k], channels, stride, affine=False) for k in self.index
        )
        # Ops with no parameters and no buffers are the same function on every edge of a
        # source, so their output can be shared (see SourceInputs).
        self.parameter_free = [not op.state_dict() for op in self.ops]

    def forward(
        self,
        x: torch.Tensor,
        weights: torch.Tensor,
        active: list[bool] | None = None,
        shared: SourceInputs | None = None,
    ) -> torch.Tensor | None:
        """``weights``: (ops,) shared by the batch, or (batch, ops) for per-example sampling.

        ``active`` (evaluation only) marks the ops whose weight is not exactly zero: one-hot
        weights of a derived architecture then cost one op, not all of them. None when no op is
        active. ``shared`` (the fast path) holds work shared with the other edges leaving the same
        node; ``x`` is then ``shared.x``.
        """
        out = None
        for pos, (k, op) in enumerate(zip(self.index, self.ops)):
            if active is not None and not active[k]:
                continue
            y = op(x) if shared is None else self._shared_output(pos, op, shared)
            w = weights[..., k]
            if w.dim() == 1:
                w = w.view(-1, 1, 1, 1)
            out = w * y if out is None else out + w * y
        return out

    def _shared_output(self, pos: int, op: nn.Module, shared: SourceInputs) -> torch.Tensor:
        grouped = shared.grouped.get((self, pos))
        if grouped is not None:
            return grouped
        if self.parameter_free[pos]:
            key = (self.index[pos], self.stride)
            if key not in shared.free:
                shared.free[key] = op(shared.x)
            return shared.free[key]
        after_relu = getattr(op, "forward_after_relu", None)
        return op(shared.x) if after_relu is None else after_relu(shared.relu())


class SearchCell(nn.Module):
    """A DAG of ``num_nodes`` nodes, each the sum of mixed ops on all earlier nodes.

    ``share_source_ops`` computes the parameter-free ops and the conv ops' leading ReLU once per
    source node instead of once per edge (see SourceInputs); ``group_ops`` (needs
    ``share_source_ops``) also runs identical parametric ops of the edges leaving one source as a
    single wider op. Both change only the cost, not the result (up to float rounding), the
    gradients or the state dict; with both off the forward is the plain per-edge loop.
    """

    def __init__(
        self,
        num_nodes: int,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        primitives: tuple[str, ...],
        share_source_ops: bool = True,
        group_ops: bool = True,
    ) -> None:
        super().__init__()
        if group_ops and not share_source_ops:
            raise ConfigError("group_ops=True needs share_source_ops=True")
        self.reduction = reduction
        self.num_nodes = num_nodes
        self.share_source_ops = share_source_ops
        self.group_ops = group_ops
        self.preprocess0, self.preprocess1 = preprocess(
            c_prev_prev, c_prev, channels, reduction_prev, affine=False
        )
        self.edges = nn.ModuleList(
            MixedOp(channels, 2 if reduction and src < 2 else 1, primitives)
            for src, _ in edge_inputs(num_nodes)
        )
        self._outgoing = [
            [e for e, (s, _) in enumerate(edge_inputs(num_nodes)) if s == src]
            for src in range(num_nodes + 1)
        ]

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
        fast = self.share_source_ops
        sources = [self._source(0, states[0], active), self._source(1, states[1], active)]
        edge = 0
        for _ in range(self.num_nodes):
            first, node = edge, None
            for src in range(len(states)):
                mask = None if active is None else active[edge]
                shared = sources[src] if fast else None
                out = self.edges[edge](states[src], weights[..., edge, :], mask, shared)
                node = out if node is None else (node if out is None else node + out)
                edge += 1
            if node is None:  # every incoming weight is zero: the node is zero
                node = self.edges[first](states[0], weights[..., first, :]).mul(0.0)
            states.append(node)
            if len(states) - 1 < len(self._outgoing):
                sources.append(self._source(len(states) - 1, node, active))
        return torch.cat(states[2:], dim=1)

    def _source(
        self, src: int, x: torch.Tensor, active: list[list[bool]] | None
    ) -> SourceInputs | None:
        """The shared work for the edges leaving node ``src``; with ``group_ops``, the grouped
        parametric ops of all those edges are run now (their inputs are all ``x``)."""
        if not self.share_source_ops:
            return None
        shared = SourceInputs(x)
        if not self.group_ops:
            return shared
        outgoing = [self.edges[e] for e in self._outgoing[src]]
        for pos, k in enumerate(outgoing[0].index):
            members = [
                m for e, m in zip(self._outgoing[src], outgoing) if active is None or active[e][k]
            ]
            ops = [m.ops[pos] for m in members]
            if can_group(ops):
                for m, y in zip(members, grouped_forward_after_relu(ops, shared.relu())):
                    shared.grouped[(m, pos)] = y
        return shared
