"""Complexity: cost tables, expected complexity and counts, against counts made by hand.

The tiny space used throughout: init_channels=2, 5 cells, 2 nodes. Reductions at cells 5//3 = 1
and 10//3 = 3, so the cells have C = 2 (normal), 4 (reduce), 4 (normal), 8 (reduce), 8 (normal).
With 2 nodes the edges are (0→2), (1→2), (0→3), (1→3), (2→3); in a reduction cell the first four
(from the cell inputs) have stride 2, the last one stride 1.

Parameter counts with affine BN (2C parameters per BN), by hand:
    sep_conv_kxk  = 2 · (k²·C + C² + 2C)      (two depthwise k×k + pointwise 1×1 + BN blocks)
    dil_conv_kxk  = k²·C + C² + 2C
    skip_connect  = 0 at stride 1 (identity); FactorizedReduce at stride 2: 2·(C·C/2) + 2C
    none, max_pool_3x3, avg_pool_3x3 = 0
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hyperdarts.complexity import count_flops, count_parameters
from hyperdarts.modules.search import HyperDARTSSearch
from hyperdarts.search_space.genotypes import Genotype
from hyperdarts.search_space.ops import PRIMITIVES, build_op

EDGES = [(0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
NORMAL_C = [2, 4, 8]
REDUCE_C = [4, 8]
ALL_C = [2, 4, 4, 8, 8]


def module(complexity: str = "params", image_size: int = 8) -> HyperDARTSSearch:
    torch.manual_seed(0)
    return HyperDARTSSearch(
        num_channels=1,
        image_size=image_size,
        num_classes=3,
        init_channels=2,
        num_cells=5,
        num_nodes=2,
        complexity=complexity,
    )


def hand_params(op: str, c: int, stride: int) -> int:
    if op in ("none", "max_pool_3x3", "avg_pool_3x3"):
        return 0
    if op == "skip_connect":
        return 0 if stride == 1 else 2 * (c * c // 2) + 2 * c
    k = int(op[-1])
    one = k * k * c + c * c + 2 * c
    return 2 * one if op.startswith("sep_conv") else one


def hand_table(cell_type: str) -> list[list[int]]:
    channels = NORMAL_C if cell_type == "normal" else REDUCE_C
    table = []
    for src, _ in EDGES:
        stride = 2 if cell_type == "reduce" and src < 2 else 1
        table.append([sum(hand_params(op, c, stride) for c in channels) for op in PRIMITIVES])
    return table


# The most expensive op on every edge of every cell is sep_conv_5x5.
HAND_NORMALIZER = len(EDGES) * sum(2 * (25 * c + c * c + 2 * c) for c in ALL_C)

GENOTYPE = Genotype(
    normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 2), ("max_pool_3x3", 0)],
    normal_concat=[2, 3],
    reduce=[("skip_connect", 0), ("sep_conv_5x5", 1), ("skip_connect", 2), ("dil_conv_3x3", 1)],
    reduce_concat=[2, 3],
)
HAND_GENOTYPE_PARAMS = (
    # normal: sep_conv_3x3 on 0→2, identity on 1→2, dil_conv_5x5 on 2→3, max pool on 0→3
    sum(2 * (9 * c + c * c + 2 * c) for c in NORMAL_C)
    + 0
    + sum(25 * c + c * c + 2 * c for c in NORMAL_C)
    + 0
    # reduce: FactorizedReduce on 0→2, sep_conv_5x5 on 1→2 (stride 2), identity on 2→3
    # (stride 1), dil_conv_3x3 on 1→3 (stride 2)
    + sum(2 * (c * c // 2) + 2 * c for c in REDUCE_C)
    + sum(2 * (25 * c + c * c + 2 * c) for c in REDUCE_C)
    + 0
    + sum(9 * c + c * c + 2 * c for c in REDUCE_C)
)


def hand_one_hot(cells, dtype=torch.float64) -> torch.Tensor:
    w = torch.zeros(len(EDGES), len(PRIMITIVES), dtype=dtype)
    for k, (op, src) in enumerate(cells):
        w[EDGES.index((src, 2 + k // 2)), PRIMITIVES.index(op)] = 1.0
    return w


def test_hand_numbers_are_what_we_think():
    # Guard the hand arithmetic itself against typos (values worked out on paper).
    assert hand_params("sep_conv_3x3", 4, 1) == 2 * (36 + 16 + 8) == 120
    assert hand_params("skip_connect", 4, 2) == 16 + 8
    assert HAND_NORMALIZER == 5 * (
        2 * (50 + 4 + 4) + 2 * 2 * (100 + 16 + 8) + 2 * 2 * (200 + 64 + 16)
    )


def test_param_cost_tables_match_hand_counts():
    m = module()
    for ct in ("normal", "reduce"):
        table = getattr(m.complexity, f"cost_{ct}")
        assert table.tolist() == hand_table(ct), ct
    # The same op costs differently with stride: FactorizedReduce vs identity in a reduce cell.
    skip = PRIMITIVES.index("skip_connect")
    assert m.complexity.cost_reduce[0, skip] > 0
    assert m.complexity.cost_reduce[4, skip] == 0


def test_normalizer_is_every_edge_at_its_most_expensive_op():
    assert module().complexity.normalizer == HAND_NORMALIZER


def test_expected_complexity_of_one_hot_choice():
    m = module()
    probs = {ct: hand_one_hot(GENOTYPE.cell(ct)) for ct in ("normal", "reduce")}
    assert float(m.complexity.raw(probs)) == HAND_GENOTYPE_PARAMS
    assert float(m.complexity(probs)) == pytest.approx(
        HAND_GENOTYPE_PARAMS / HAND_NORMALIZER, rel=1e-12
    )


def test_genotype_complexity_matches_hand_count():
    m = module()
    assert m.genotype_complexity(GENOTYPE) == pytest.approx(
        HAND_GENOTYPE_PARAMS / HAND_NORMALIZER, rel=1e-6
    )


def test_extremes_of_the_normalized_complexity():
    m = module()
    sep5 = PRIMITIVES.index("sep_conv_5x5")
    biggest = {ct: torch.zeros(5, 8, dtype=torch.float64) for ct in ("normal", "reduce")}
    nothing = {ct: torch.zeros(5, 8, dtype=torch.float64) for ct in ("normal", "reduce")}
    for ct in biggest:
        biggest[ct][:, sep5] = 1
        nothing[ct][:, 0] = 1
    assert float(m.complexity(biggest)) == pytest.approx(1.0, rel=1e-12)
    assert float(m.complexity(nothing)) == 0.0


@pytest.mark.parametrize(
    "op,c,stride",
    [
        ("sep_conv_3x3", 6, 1),
        ("sep_conv_5x5", 6, 2),
        ("dil_conv_3x3", 4, 1),
        ("dil_conv_5x5", 4, 2),
        ("skip_connect", 6, 2),
        ("skip_connect", 6, 1),
        ("max_pool_3x3", 6, 2),
        ("avg_pool_3x3", 6, 1),
        ("none", 6, 2),
    ],
)
def test_count_parameters_of_ops(op, c, stride):
    assert count_parameters(build_op(op, c, stride, affine=True)) == hand_params(op, c, stride)


def test_count_parameters_small_module():
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.Flatten(), nn.Linear(5, 2))
    assert count_parameters(net) == (3 * 5 * 9 + 5) + 2 * 5 + (5 * 2 + 2)


@pytest.mark.parametrize("h,w", [(9, 9), (9, 7), (8, 8)])
def test_count_flops_single_conv(h, w):
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False)
    h_out, w_out = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1
    assert count_flops(conv, (3, h, w)) == 2 * 3 * 5 * 9 * h_out * w_out


def sep_flops(k: int, c: int, size_out: int) -> int:
    # Per DilConv: depthwise k×k (2·C·k² per output pixel) + pointwise (2·C² per pixel); two of
    # them, both producing size_out × size_out.
    return 2 * (2 * c * k * k + 2 * c * c) * size_out**2


@pytest.mark.parametrize("image_size", [8, 10])
def test_flops_cost_tables_at_each_edge_feature_map(image_size):
    m = module("flops", image_size)
    s1 = image_size  # input of reduce cell 1 (stem and cell 0 keep the size)
    s2 = math.ceil(s1 / 2)  # output of cell 1, input of cell 2 and reduce cell 3
    s3 = math.ceil(s2 / 2)  # output of cell 3, size of cell 4
    sep3, dil5 = PRIMITIVES.index("sep_conv_3x3"), PRIMITIVES.index("dil_conv_5x5")
    skip = PRIMITIVES.index("skip_connect")
    reduce, normal = m.complexity.cost_reduce, m.complexity.cost_normal

    # Reduce edge from a cell input: stride 2 on the cell's input size; output ceil(s/2).
    hand = sep_flops(3, 4, s2) + sep_flops(3, 8, s3)
    assert reduce[0, sep3].item() == hand
    # The internal edge 2→3 of a reduce cell: stride 1 on the already-reduced size (same output).
    assert reduce[4, sep3].item() == hand
    # dil_conv_5x5, stride 2: one depthwise + one pointwise at the output size.
    hand_dil = sum((2 * c * 25 + 2 * c * c) * s**2 for c, s in ((4, s2), (8, s3)))
    assert reduce[1, dil5].item() == hand_dil
    # FactorizedReduce: two 1×1 convs C → C/2 at the output size.
    hand_fr = sum(2 * 2 * c * (c // 2) * s**2 for c, s in ((4, s2), (8, s3)))
    assert reduce[2, skip].item() == hand_fr
    assert reduce[4, skip].item() == 0
    # Normal cells at C=2 (size s1), C=4 (size s2), C=8 (size s3).
    assert normal[3, sep3].item() == sep_flops(3, 2, s1) + sep_flops(3, 4, s2) + sep_flops(3, 8, s3)
    # Pools count no FLOPs (only convolutions and matmuls are counted).
    assert reduce[:, PRIMITIVES.index("max_pool_3x3")].sum() == 0


def test_penalty_is_differentiable_and_in_unit_interval():
    m = module()
    g = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 5.0):
        alpha = {
            ct: (scale * torch.randn(5, 8, generator=g, dtype=torch.float64)).requires_grad_(True)
            for ct in ("normal", "reduce")
        }
        c = m.complexity({ct: torch.softmax(a, -1) for ct, a in alpha.items()})
        assert 0.0 <= c.item() <= 1.0
        grads = torch.autograd.grad(c, list(alpha.values()))
        for grad in grads:
            assert grad.abs().sum() > 0
            # Raising sep_conv_5x5's logit raises the expected cost; raising none's lowers it.
            assert (grad[:, PRIMITIVES.index("sep_conv_5x5")] > 0).all()
            assert (grad[:, PRIMITIVES.index("none")] < 0).all()


def test_per_example_weights_are_averaged():
    m = module()
    g = torch.Generator().manual_seed(1)
    probs = {
        ct: torch.softmax(torch.randn(4, 5, 8, generator=g, dtype=torch.float64), -1)
        for ct in ("normal", "reduce")
    }
    rows = [float(m.complexity({ct: p[i] for ct, p in probs.items()})) for i in range(4)]
    assert float(m.complexity(probs)) == pytest.approx(sum(rows) / 4, rel=1e-12)


def test_smallest_allowed_image_size_builds():
    """validate_space accepts image_size=4 (4 → 2 → 1 after the two reductions), so the module
    must build: the cost tables' size probe must not trip BatchNorm on a 1×1 map at batch 1."""
    torch.manual_seed(0)
    m = HyperDARTSSearch(
        num_channels=1, image_size=4, num_classes=3, init_channels=2, num_cells=3, num_nodes=2
    )
    # Parameter costs do not depend on the size: cells C = 2 (normal), 4 and 8 (reduce).
    assert m.complexity.normalizer == 5 * sum(2 * (25 * c + c * c + 2 * c) for c in (2, 4, 8))
    assert m.net(torch.randn(2, 1, 4, 4), m.probs(0.1)).shape == (2, 3)
