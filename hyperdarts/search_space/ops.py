"""The DARTS candidate operations.

Every op maps ``C`` channels to ``C`` channels; ``stride=2`` halves the spatial size (rounding
up, so odd sizes such as MNIST's 7x7 work). During search BN has no affine parameters (DARTS), so
the architecture weights alone scale each op; the evaluation network uses affine BN.
"""

from __future__ import annotations

from collections.abc import Callable

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


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable convs, as DARTS defines ``sep_conv``."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True
    ) -> None:
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )


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
        x = self.relu(x)
        # Shift by one pixel; the zero pad keeps odd sizes aligned with conv_1's output.
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


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
