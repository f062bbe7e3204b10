"""Search space: supernet shapes, mixing weights, the derive rule, and configuration errors."""

from __future__ import annotations

import math

import pytest
import torch

from hyperdarts.modules.search import HyperDARTSSearch
from hyperdarts.search_space.cells import MixedOp, edge_inputs, num_edges
from hyperdarts.search_space.genotypes import derive, derive_genotype
from hyperdarts.search_space.networks import SuperNet
from hyperdarts.search_space.ops import PRIMITIVES

CELL_TYPES = ("normal", "reduce")


def random_weights(edges: int, batch: int | None = None, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shape = (edges, len(PRIMITIVES)) if batch is None else (batch, edges, len(PRIMITIVES))
    return {
        ct: torch.softmax(torch.randn(shape, generator=g, dtype=dtype), -1) for ct in CELL_TYPES
    }


# --- supernet ---------------------------------------------------------------------------------


def test_edge_bookkeeping():
    assert num_edges(4) == 14 and num_edges(2) == 5
    assert edge_inputs(2) == [(0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]


@pytest.mark.parametrize(
    "channels,size,cells",
    [(1, 8, 3), (1, 28, 3), (1, 28, 4), (1, 28, 5), (3, 32, 3), (1, 14, 4), (1, 7, 4), (3, 5, 3)],
)
def test_supernet_output_shape(channels, size, cells):
    """Odd sizes (7x7 on MNIST after two reductions, 7 → 4, 5 → 3) go through: stride-2 ops and
    FactorizedReduce round up."""
    torch.manual_seed(0)
    net = SuperNet(channels, 3, size, init_channels=2, num_cells=cells, num_nodes=2).double()
    seen = []
    hooks = [c.register_forward_hook(lambda m, a, out: seen.append(out.shape)) for c in net.cells]
    x = torch.randn(4, channels, size, size, dtype=torch.float64)
    out = net(x, random_weights(5))
    for h in hooks:
        h.remove()
    assert out.shape == (4, 3)
    assert torch.isfinite(out).all()
    first, second = cells // 3, 2 * cells // 3
    expected, c = size, 2
    for i, shape in enumerate(seen):
        if i in (first, second):
            expected, c = math.ceil(expected / 2), 2 * c
        assert shape == (4, 2 * c, expected, expected), i  # 2 nodes concatenated


def test_per_example_weights_equal_rows_match_shared():
    torch.manual_seed(0)
    net = SuperNet(1, 3, 8, init_channels=2, num_cells=3, num_nodes=2).double()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    shared = random_weights(5, seed=1)
    per_example = {ct: w.expand(5, -1, -1).clone() for ct, w in shared.items()}
    assert torch.allclose(net(x, per_example), net(x, shared), rtol=1e-12, atol=1e-14)
    # ... and different rows give a different output.
    other = {ct: w.clone() for ct, w in per_example.items()}
    other["normal"][2] = other["normal"][2].flip(-1)
    assert not torch.allclose(net(x, other), net(x, shared))


def test_mixed_op_per_example_weights_mix_row_by_row():
    torch.manual_seed(0)
    mixed = MixedOp(4, 1, PRIMITIVES).double()
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    w = torch.softmax(torch.randn(3, len(PRIMITIVES), dtype=torch.float64), -1)
    outputs = {k: op(x) for k, op in zip(mixed.index, mixed.ops)}  # batch statistics: whole batch
    ref = torch.stack([sum(w[i, k] * outputs[k][i] for k in outputs) for i in range(x.shape[0])])
    assert torch.allclose(mixed(x, w), ref, rtol=1e-12, atol=1e-14)
    assert PRIMITIVES.index("none") not in outputs


def test_none_contributes_nothing():
    torch.manual_seed(0)
    net = SuperNet(1, 3, 8, init_channels=2, num_cells=3, num_nodes=2).double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    w = random_weights(5, seed=2)
    none = PRIMITIVES.index("none")
    zero_none = {ct: v.clone() for ct, v in w.items()}
    big_none = {ct: v.clone() for ct, v in w.items()}
    for ct in CELL_TYPES:
        zero_none[ct][:, none] = 0.0
        big_none[ct][:, none] = 5.0
    assert torch.equal(net(x, zero_none), net(x, big_none))
    # The other weights do matter (so the comparison above is not vacuous).
    shifted = {ct: v.clone() for ct, v in zero_none.items()}
    shifted["reduce"][:, PRIMITIVES.index("sep_conv_3x3")] += 1.0
    assert not torch.allclose(net(x, shifted), net(x, zero_none))


# --- the derive rule --------------------------------------------------------------------------

P = {name: k for k, name in enumerate(PRIMITIVES)}


def edge_row(**weights: float) -> list[float]:
    """A row of mixing weights: the named ops get their value, the rest share what is left."""
    rest = (1.0 - sum(weights.values())) / (len(PRIMITIVES) - len(weights))
    return [weights.get(name, rest) for name in PRIMITIVES]


def test_derive_strongest_op_and_two_strongest_edges():
    probs = torch.tensor(
        [
            edge_row(sep_conv_3x3=0.5),  # 0→2
            edge_row(none=0.9, max_pool_3x3=0.06),  # 1→2: none strongest, ignored
            edge_row(skip_connect=0.3),  # 0→3
            edge_row(none=0.95, dil_conv_5x5=0.04),  # 1→3: a strong none does not select it
            edge_row(avg_pool_3x3=0.35),  # 2→3
        ]
    )
    cell = derive(probs, PRIMITIVES, 2)
    assert len(cell) == 4
    assert set(cell[:2]) == {("sep_conv_3x3", 0), ("max_pool_3x3", 1)}
    assert set(cell[2:]) == {("skip_connect", 0), ("avg_pool_3x3", 2)}


def test_derive_ranks_an_edge_by_its_best_non_none_op():
    probs = torch.tensor(
        [
            edge_row(sep_conv_3x3=0.5),
            edge_row(dil_conv_3x3=0.5),
            edge_row(none=0.5, sep_conv_5x5=0.4),  # 0→3: strongest is none; best other 0.4
            edge_row(skip_connect=0.3),  # 1→3
            edge_row(max_pool_3x3=0.2),  # 2→3
        ]
    )
    cell = derive(probs, PRIMITIVES, 2)
    assert set(cell[2:]) == {("sep_conv_5x5", 0), ("skip_connect", 1)}


def test_derive_ties_go_to_earlier_op_and_earlier_input():
    tie_ops = edge_row(dil_conv_3x3=0.3, sep_conv_3x3=0.3)  # sep_conv_3x3 comes first
    probs = torch.tensor(
        [
            tie_ops,
            edge_row(avg_pool_3x3=0.4, max_pool_3x3=0.4),
            edge_row(skip_connect=0.1),  # 0→3: weakest
            edge_row(dil_conv_5x5=0.3),  # 1→3: tied with 2→3
            edge_row(sep_conv_5x5=0.3),  # 2→3
        ],
        dtype=torch.float64,
    )
    cell = derive(probs, PRIMITIVES, 2)
    assert set(cell[:2]) == {("sep_conv_3x3", 0), ("max_pool_3x3", 1)}
    assert set(cell[2:]) == {("dil_conv_5x5", 1), ("sep_conv_5x5", 2)}
    # a three-way tie between the edges of node 3 keeps inputs 0 and 1
    probs[2:] = torch.tensor(edge_row(skip_connect=0.3), dtype=torch.float64)
    assert {i for _, i in derive(probs, PRIMITIVES, 2)[2:]} == {0, 1}


def reference_derive(probs: torch.Tensor, num_nodes: int) -> list[set[tuple[str, int]]]:
    """The DARTS rule written independently: per node, the set of kept (op, input) pairs."""
    rows = probs.tolist()
    nodes, start = [], 0
    for j in range(num_nodes):
        candidates = []
        for i in range(j + 2):
            row = rows[start + i]
            best = max((v, -k) for k, v in enumerate(row) if PRIMITIVES[k] != "none")
            candidates.append((best[0], -i, PRIMITIVES[-best[1]], i))
        top = sorted(candidates, reverse=True)[:2]
        nodes.append({(op, i) for _, _, op, i in top})
        start += j + 2
    return nodes


@pytest.mark.parametrize("seed", range(5))
def test_derive_matches_reference_on_random_four_node_cells(seed):
    g = torch.Generator().manual_seed(seed)
    probs = {ct: torch.softmax(2 * torch.randn(14, 8, generator=g), -1) for ct in CELL_TYPES}
    # make none often the strongest op, as it becomes in long DARTS searches
    for ct in CELL_TYPES:
        probs[ct][::2, P["none"]] += 1.0
    genotype = derive_genotype(probs, PRIMITIVES, 4)
    assert genotype.normal_concat == genotype.reduce_concat == (2, 3, 4, 5)
    for ct in CELL_TYPES:
        cell = genotype.cell(ct)
        assert len(cell) == 8
        got = [set(cell[2 * j : 2 * j + 2]) for j in range(4)]
        assert got == reference_derive(probs[ct], 4)
        assert all(op != "none" for op, _ in cell)


# --- configuration errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"num_cells": 2}, "num_cells"),
        ({"init_channels": 3}, "init_channels"),
        ({"primitives": ["sep_conv_3x3", "conv_7x7"]}, "primitives"),
        ({"primitives": ["none"]}, "primitives"),
        ({"num_nodes": 1}, "num_nodes"),
    ],
)
def test_invalid_space_names_the_field(overrides, field):
    kwargs = dict(num_channels=1, num_classes=3, image_size=8, init_channels=2, num_cells=3)
    kwargs.update(overrides)
    with pytest.raises(ValueError, match=field):
        SuperNet(**kwargs)
    with pytest.raises(ValueError, match=field):
        HyperDARTSSearch(**kwargs)


def test_custom_primitives_without_none():
    torch.manual_seed(0)
    prims = ["skip_connect", "sep_conv_3x3"]
    net = SuperNet(1, 3, 8, 2, 3, 2, primitives=prims).double()
    w = {ct: torch.full((5, 2), 0.5, dtype=torch.float64) for ct in CELL_TYPES}
    assert net(torch.randn(2, 1, 8, 8, dtype=torch.float64), w).shape == (2, 3)


def test_evaluation_skips_zero_weight_ops_without_changing_the_output() -> None:
    """Without autograd, ops with exactly zero weight are skipped; the output must not change."""
    torch.manual_seed(0)
    net = SuperNet(1, 10, image_size=8, init_channels=4, num_cells=3, num_nodes=4).double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    weights = {}
    for kind in ("normal", "reduce"):
        w = torch.zeros(14, len(PRIMITIVES), dtype=torch.float64)
        w[torch.arange(14), torch.randint(1, len(PRIMITIVES), (14,))] = 1.0
        w[3] = 0.0  # an edge with no active op at all
        weights[kind] = w
    with torch.enable_grad():
        full = net(x, weights)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    calls: list[int] = []
    hooks = [m.register_forward_hook(lambda *args: calls.append(1)) for m in convs]
    with torch.no_grad():
        skipped = net(x, weights)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(skipped, full, rtol=0, atol=1e-12)
    assert len(calls) < len(convs) / 2  # most ops were not run
