"""The DARTS evaluation network: a genotype's discrete cells, stacked and trained from scratch.

The layout follows the DARTS protocol exactly (stem, reductions at L/3 and 2L/3, auxiliary head
after cell 2L/3, drop path on every non-identity op), so that a cell published by another
DARTS-family paper, written as a :class:`Genotype`, builds to the parameter count that paper
reports. Feature maps of odd or small size (MNIST 28x28, 8x8 digits) are supported too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hyperdarts.search_space.genotypes import Genotype
from hyperdarts.search_space.networks import reduction_layers, validate_space
from hyperdarts.search_space.ops import build_op, preprocess

CIFAR_AUX_SIZE = 8


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole examples with probability ``drop_prob``; rescale survivors to keep the mean."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


class EvalCell(nn.Module):
    """One discrete cell: each intermediate node sums its two chosen (op, input) edges."""

    def __init__(
        self,
        genotype: Genotype,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        cell_type = "reduce" if reduction else "normal"
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = preprocess(
            c_prev_prev, c_prev, channels, reduction_prev, affine=True
        )
        edges = genotype.cell(cell_type)
        self.inputs = [src for _, src in edges]
        self.ops = nn.ModuleList(
            build_op(op, channels, 2 if reduction and src < 2 else 1, affine=True)
            for op, src in edges
        )
        self.concat = genotype.concat(cell_type)
        self.out_channels = len(self.concat) * channels

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for k in range(0, len(self.ops), 2):
            states.append(self._edge(k, states, drop_prob) + self._edge(k + 1, states, drop_prob))
        return torch.cat([states[i] for i in self.concat], dim=1)

    def _edge(self, k: int, states: list[torch.Tensor], drop_prob: float) -> torch.Tensor:
        op = self.ops[k]
        h = op(states[self.inputs[k]])
        if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
            h = drop_path(h, drop_prob)
        return h


class AuxiliaryHead(nn.Module):
    """DARTS's CIFAR auxiliary classifier, which expects 8x8 maps.

    At 8x8 the layout is DARTS's (5x5 average pool, stride 3 → 2x2); other sizes are pooled
    adaptively to 2x2 so that the 2x2 conv, and hence the parameter count, stay the same.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        if x.shape[-2:] == (CIFAR_AUX_SIZE, CIFAR_AUX_SIZE):
            x = self.pool(x)
        else:
            x = F.adaptive_avg_pool2d(x, 2)
        return self.classifier(self.features(x).flatten(1))


class EvalNetwork(nn.Module):
    """Stem, ``num_cells`` discrete cells, global pooling and a linear classifier.

    ``drop_path_prob`` is a plain attribute so a training schedule can raise it each epoch.
    """

    def __init__(
        self,
        genotype: Genotype,
        num_channels: int,
        num_classes: int,
        image_size: int = 32,
        init_channels: int = 36,
        num_cells: int = 20,
        stem_multiplier: int = 3,
        auxiliary: bool = True,
        drop_path_prob: float = 0.0,
    ) -> None:
        super().__init__()
        _validate(genotype, num_channels, num_classes, drop_path_prob)
        validate_space(num_cells, genotype.num_nodes, init_channels, stem_multiplier, image_size)
        self.genotype = genotype
        self.drop_path_prob = drop_path_prob
        self.aux_index = 2 * num_cells // 3
        c = stem_multiplier * init_channels
        self.stem = nn.Sequential(
            nn.Conv2d(num_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        )
        self.cells, c_prev = self._build_cells(genotype, c, init_channels, num_cells)
        c_aux = self.cells[self.aux_index].out_channels
        self.auxiliary_head = AuxiliaryHead(c_aux, num_classes) if auxiliary else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    @staticmethod
    def _build_cells(
        genotype: Genotype, c_stem: int, channels: int, num_cells: int
    ) -> tuple[nn.ModuleList, int]:
        cells = nn.ModuleList()
        c_pp, c_p, reduction_prev = c_stem, c_stem, False
        reductions = reduction_layers(num_cells)
        for i in range(num_cells):
            reduction = i in reductions
            if reduction:
                channels *= 2
            cell = EvalCell(genotype, c_pp, c_p, channels, reduction, reduction_prev)
            cells.append(cell)
            c_pp, c_p, reduction_prev = c_p, cell.out_channels, reduction
        return cells, c_p

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits, and the auxiliary logits in training (``None`` otherwise)."""
        aux_logits = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux_logits = self.auxiliary_head(s1)
        return self.classifier(self.pool(s1).flatten(1)), aux_logits


def _validate(
    genotype: Genotype, num_channels: int, num_classes: int, drop_path_prob: float
) -> None:
    if not isinstance(genotype, Genotype):
        raise ValueError(f"genotype: expected a Genotype, got {type(genotype).__name__}")
    if num_channels < 1:
        raise ValueError(f"num_channels={num_channels}: images need at least one channel")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
    if not 0.0 <= drop_path_prob < 1.0:
        raise ValueError(f"drop_path_prob={drop_path_prob}: must be in [0, 1)")


def count_eval_parameters(net: EvalNetwork) -> int:
    """Parameters without the auxiliary head, as DARTS-family papers count them."""
    total = sum(p.numel() for p in net.parameters())
    if net.auxiliary_head is None:
        return total
    return total - sum(p.numel() for p in net.auxiliary_head.parameters())
