"""The DARTS candidate operations.

Every op maps ``C`` channels to ``C`` channels; ``stride=2`` halves the spatial size (rounding
up, so odd sizes such as MNIST's 7x7 work). During search BN has no affine parameters (DARTS), so
the architecture weights alone scale each op; the evaluation network uses affine BN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hyperdarts.errors import ConfigError

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class ReLUConvBN(nn.Sequential):
    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine, track_running_stats=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, depthwise dilated conv, pointwise conv, BN."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False
            ),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine, track_running_stats=affine),
        )

    def forward_after_relu(self, x_relu: torch.Tensor) -> torch.Tensor:
        """The op given ``relu(x)``: the supernet computes the ReLU once per source node and
        shares it between all edges (and ops) that read that node."""
        return self[3](self[2](self[1](x_relu)))


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable convs, as DARTS defines ``sep_conv``."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True
    ) -> None:
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )

    def forward_after_relu(self, x_relu: torch.Tensor) -> torch.Tensor:
        """The op given ``relu(x)`` (see ``DilConv.forward_after_relu``)."""
        return self[1](self[0].forward_after_relu(x_relu))


class FactorizedReduce(nn.Module):
    """Halves the spatial size with two 1x1 convs offset by one pixel, keeping all positions."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        if c_out % 2:
            raise ConfigError(
                f"FactorizedReduce needs an even number of output channels, got {c_out}"
            )
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine, track_running_stats=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_after_relu(self.relu(x))

    def forward_after_relu(self, x_relu: torch.Tensor) -> torch.Tensor:
        """The op given ``relu(x)`` (see ``DilConv.forward_after_relu``)."""
        shifted = shift_one_pixel(x_relu)
        return self.bn(torch.cat([self.conv_1(x_relu), self.conv_2(shifted)], dim=1))


def shift_one_pixel(x: torch.Tensor) -> torch.Tensor:
    """Shift by one pixel up and left; the zero pad keeps odd sizes aligned with a stride-2
    1x1 conv of the unshifted input (FactorizedReduce's second branch)."""
    return F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]


class Zero(nn.Module):
    """The ``none`` op. Mixed ops skip it (output and gradient are zero); complexity counts it."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def preprocess(
    c_prev_prev: int, c_prev: int, channels: int, reduction_prev: bool, affine: bool
) -> tuple[nn.Module, nn.Module]:
    """A cell's two input adapters: both previous outputs to ``channels`` at this cell's input
    size (the older one is halved when the previous cell was a reduction)."""
    if reduction_prev:
        first: nn.Module = FactorizedReduce(c_prev_prev, channels, affine)
    else:
        first = ReLUConvBN(c_prev_prev, channels, 1, 1, 0, affine)
    return first, ReLUConvBN(c_prev, channels, 1, 1, 0, affine)


OpBuilder = Callable[[int, int, bool], nn.Module]

OPS: dict[str, OpBuilder] = {
    "none": lambda c, stride, affine: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda c, stride, affine: nn.AvgPool2d(
        3, stride=stride, padding=1, count_include_pad=False
    ),
    "skip_connect": lambda c, stride, affine: (
        nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    ),
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine),
    "dil_conv_3x3": lambda c, stride, affine: DilConv(c, c, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda c, stride, affine: DilConv(c, c, 5, stride, 4, 2, affine),
}


def build_op(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    """Build op ``name``; pools get a BN during search so their scale matches the conv ops."""
    if name not in OPS:
        raise ConfigError(f"unknown operation {name!r}; known operations: {', '.join(OPS)}")
    op = OPS[name](channels, stride, affine)
    if "pool" in name and not affine:
        op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False, track_running_stats=False))
    return op


def validate_primitives(primitives: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Check a user's op set: known names, no repeats, at least one op other than ``none``."""
    unknown = [p for p in primitives if p not in OPS]
    if unknown:
        raise ConfigError(
            f"primitives: unknown operation(s) {unknown}; choose from {', '.join(OPS)}"
        )
    if len(set(primitives)) != len(primitives):
        raise ConfigError(f"primitives: each operation may appear once, got {list(primitives)}")
    if not [p for p in primitives if p != "none"]:
        raise ConfigError("primitives: needs at least one operation other than 'none'")
    return tuple(primitives)


# --- grouped evaluation of identical ops that read the same input ---------------------------
#
# In a search cell the edges leaving one source node all hold the same candidate ops with
# different parameters. At the small sizes of a search the cost of an op is mostly per-call
# overhead, so evaluating k identical ops as one op k times as wide (parameters concatenated at
# forward time, so the state dict is unchanged) is cheaper than k calls. Convolutions and BN act
# per channel (or per group), so the result equals the k separate ops up to float rounding.


def _batch_norm_batch_stats(bns: Sequence[nn.BatchNorm2d], y: torch.Tensor) -> torch.Tensor:
    """BN with batch statistics over the channels of ``len(bns)`` ops concatenated along dim 1.

    Batch statistics are per channel, so one call equals the separate BNs."""
    first = bns[0]
    weight = torch.cat([b.weight for b in bns]) if first.affine else None
    bias = torch.cat([b.bias for b in bns]) if first.affine else None
    return F.batch_norm(y, None, None, weight, bias, True, 0.0, first.eps)


def _grouped_dil_conv(ops: Sequence[DilConv], x: torch.Tensor) -> torch.Tensor:
    """DilConv without its ReLU for ``k`` ops; ``x`` holds each op's input, op-major on dim 1."""
    k, dw, pw = len(ops), ops[0][1], ops[0][2]
    y = F.conv2d(
        x,
        torch.cat([op[1].weight for op in ops]),
        None,
        dw.stride,
        dw.padding,
        dw.dilation,
        dw.groups * k,
    )
    y = F.conv2d(y, torch.cat([op[2].weight for op in ops]), None, 1, 0, 1, pw.groups * k)
    return _batch_norm_batch_stats([op[3] for op in ops], y)


def can_group(ops: Sequence[nn.Module]) -> bool:
    """Whether ``grouped_forward_after_relu`` handles these ops: two or more of one grouped kind,
    same configuration, BN with batch statistics only (the search setting)."""
    if len(ops) < 2 or type(ops[0]) not in (DilConv, SepConv, FactorizedReduce):
        return False
    if any(type(op) is not type(ops[0]) for op in ops):
        return False
    bns = [m for op in ops for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [[m for m in op.modules() if isinstance(m, nn.Conv2d)] for op in ops]
    same = all(
        [(c.weight.shape, c.stride, c.padding, c.dilation, c.groups) for c in cs]
        == [(c.weight.shape, c.stride, c.padding, c.dilation, c.groups) for c in convs[0]]
        for cs in convs
    )
    return same and all(
        b.running_mean is None and b.eps == bns[0].eps and b.affine == bns[0].affine for b in bns
    )


def grouped_forward_after_relu(
    ops: Sequence[nn.Module], x_relu: torch.Tensor
) -> list[torch.Tensor]:
    """``[op.forward_after_relu(x_relu) for op in ops]`` as one wide op (check ``can_group``)."""
    k = len(ops)
    if isinstance(ops[0], FactorizedReduce):
        # The input is shared, so the 1x1 convs just get more output channels.
        y1 = F.conv2d(x_relu, torch.cat([op.conv_1.weight for op in ops]), None, 2)
        y2 = F.conv2d(shift_one_pixel(x_relu), torch.cat([op.conv_2.weight for op in ops]), None, 2)
        half = y1.shape[1] // k
        parts = [
            t
            for i in range(k)
            for t in (y1[:, i * half : (i + 1) * half], y2[:, i * half : (i + 1) * half])
        ]
        z = _batch_norm_batch_stats([op.bn for op in ops], torch.cat(parts, dim=1))
        return list(z.chunk(k, dim=1))
    # Depthwise convs read one copy of the input per op (op-major), pointwise convs use groups=k.
    x = x_relu.repeat(1, k, 1, 1)
    if isinstance(ops[0], SepConv):
        y = _grouped_dil_conv([op[0] for op in ops], x)
        y = _grouped_dil_conv([op[1] for op in ops], F.relu(y))
    else:
        y = _grouped_dil_conv(ops, x)
    return list(y.chunk(k, dim=1))
