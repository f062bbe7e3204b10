"""Hypernetworks G_θ: normalized log-λ t ∈ [0, 1] → architecture logits α for each cell type.

All kinds produce a tensor of shape (2, edges, ops) — normal and reduce cells — and are returned as
a dict keyed by cell type. ``constant`` ignores t: it is plain DARTS, the baseline.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from hyperdarts.errors import ConfigError
from hyperdarts.search_space.networks import CELL_TYPES

HypernetKind = Literal["constant", "linear", "piecewise", "mlp"]
INIT_SCALE = 1e-3  # DARTS initialises α at 1e-3 · N(0, 1): nearly uniform mixing at the start


class Hypernetwork(nn.Module):
    def __init__(self, num_edges: int, num_ops: int) -> None:
        super().__init__()
        self.shape = (len(CELL_TYPES), num_edges, num_ops)

    def logits(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, t: torch.Tensor | float) -> dict[str, torch.Tensor]:
        t = torch.as_tensor(t, dtype=self._dtype(), device=self._device()).clamp(0.0, 1.0)
        alpha = self.logits(t)
        return {name: alpha[k] for k, name in enumerate(CELL_TYPES)}

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _init(self, *shape: int) -> nn.Parameter:
        return nn.Parameter(INIT_SCALE * torch.randn(*shape, *self.shape))


class ConstantHypernetwork(Hypernetwork):
    """α independent of λ: DARTS."""

    def __init__(self, num_edges: int, num_ops: int) -> None:
        super().__init__(num_edges, num_ops)
        self.alpha = self._init()

    def logits(self, t: torch.Tensor) -> torch.Tensor:
        return self.alpha


class LinearHypernetwork(Hypernetwork):
    """α(t) = t·B1 + B2 (the seed paper)."""

    def __init__(self, num_edges: int, num_ops: int) -> None:
        super().__init__(num_edges, num_ops)
        self.slope = self._init()
        self.intercept = self._init()

    def logits(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.slope + self.intercept


class PiecewiseLinearHypernetwork(Hypernetwork):
    """K anchors at t = 0, 1/(K-1), …, 1; α linearly interpolated (the extended paper)."""

    def __init__(self, num_edges: int, num_ops: int, num_knots: int = 5) -> None:
        super().__init__(num_edges, num_ops)
        if num_knots < 2:
            raise ConfigError(
                f"num_knots={num_knots}: a piecewise-linear map needs at least 2 knots"
            )
        self.num_knots = num_knots
        self.anchors = self._init(num_knots)

    def logits(self, t: torch.Tensor) -> torch.Tensor:
        pos = t * (self.num_knots - 1)
        left = int(pos.detach().floor().clamp(max=self.num_knots - 2))
        frac = pos - left
        return (1 - frac) * self.anchors[left] + frac * self.anchors[left + 1]


class MLPHypernetwork(Hypernetwork):
    """A small MLP on t; its last layer starts near zero so α starts near-uniform, as in DARTS."""

    def __init__(self, num_edges: int, num_ops: int, hidden: int = 32) -> None:
        super().__init__(num_edges, num_ops)
        if hidden < 1:
            raise ConfigError(f"mlp_hidden={hidden}: must be >= 1")
        out = nn.Linear(hidden, self.shape[0] * self.shape[1] * self.shape[2])
        nn.init.normal_(out.weight, std=INIT_SCALE)
        nn.init.normal_(out.bias, std=INIT_SCALE)
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), out)

    def logits(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(t.reshape(1, 1)).reshape(self.shape)


def build_hypernetwork(
    kind: HypernetKind, num_edges: int, num_ops: int, num_knots: int = 5, mlp_hidden: int = 32
) -> Hypernetwork:
    if kind == "constant":
        return ConstantHypernetwork(num_edges, num_ops)
    if kind == "linear":
        return LinearHypernetwork(num_edges, num_ops)
    if kind == "piecewise":
        return PiecewiseLinearHypernetwork(num_edges, num_ops, num_knots)
    if kind == "mlp":
        return MLPHypernetwork(num_edges, num_ops, mlp_hidden)
    raise ConfigError(f"hypernet={kind!r}: choose one of constant, linear, piecewise, mlp")
