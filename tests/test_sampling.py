"""Random DARTS architectures, and random ones matched in parameter count to a target."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from hyperdarts.errors import HyperDARTSError
from hyperdarts.family import EvalSpec
from hyperdarts.search_space.evaluation import count_eval_parameters
from hyperdarts.search_space.genotypes import Genotype
from hyperdarts.search_space.ops import PRIMITIVES
from hyperdarts.search_space.published import DARTS_V2
from hyperdarts.search_space.sampling import (
    SamplingError,
    matched_random_genotype,
    parameter_range,
    random_genotype,
)

SPEC = EvalSpec(num_channels=1, num_classes=10, image_size=8, init_channels=8, num_cells=5)
OPS = [p for p in PRIMITIVES if p != "none"]
NODES = (2, 3, 4, 5)


def count(genotype: Genotype) -> int:
    return count_eval_parameters(SPEC.build(genotype))


def uniform(op: str) -> Genotype:
    cell = tuple((op, i) for j in range(4) for i in (j, j + 1))
    return Genotype(normal=cell, normal_concat=NODES, reduce=cell, reduce_concat=NODES)


ALL_POOL = uniform("max_pool_3x3")


def fake_count(genotype: Genotype) -> int:
    """An additive count with DARTS-like costs that needs no network (for many-draw tests)."""
    cost = {"max_pool_3x3": 0, "avg_pool_3x3": 0, "skip_connect": 0, "sep_conv_3x3": 40}
    cost |= {"sep_conv_5x5": 90, "dil_conv_3x3": 20, "dil_conv_5x5": 45}
    total = 1000
    for cell_type in ("normal", "reduce"):
        for op, node in genotype.cell(cell_type):
            strided_skip = cell_type == "reduce" and node < 2 and op == "skip_connect"
            total += 15 if strided_skip else cost[op]
    return total


# --- uniform draws --------------------------------------------------------------------------------


def test_draws_are_darts_genotypes() -> None:
    rng = random.Random(0)
    for _ in range(50):
        g = random_genotype(rng)
        assert isinstance(g, Genotype) and g.num_nodes == 4
        assert g.normal_concat == g.reduce_concat == NODES
        for cell_type in ("normal", "reduce"):
            edges = g.cell(cell_type)
            assert all(op in OPS for op, _ in edges)  # never 'none'
            for j in range(4):
                (_, a), (_, b) = edges[2 * j : 2 * j + 2]
                assert a < b < j + 2  # distinct inputs, listed by input node


def test_draws_are_deterministic_per_seed_and_differ_across_seeds() -> None:
    assert random_genotype(random.Random(3)) == random_genotype(random.Random(3))
    draws = {random_genotype(random.Random(seed)) for seed in range(10)}
    assert len(draws) == 10


def test_draws_cover_every_op_and_every_legal_input() -> None:
    rng = random.Random(1)
    ops: dict[str, Counter] = {"normal": Counter(), "reduce": Counter()}
    inputs: dict[str, set] = {"normal": set(), "reduce": set()}
    for _ in range(400):
        g = random_genotype(rng)
        for cell_type in ("normal", "reduce"):
            for k, (op, node) in enumerate(g.cell(cell_type)):
                ops[cell_type][op] += 1
                inputs[cell_type].add((k // 2, node))
    legal = {(j, i) for j in range(4) for i in range(j + 2)}
    for cell_type in ("normal", "reduce"):
        assert set(ops[cell_type]) == set(OPS)
        # Uniform: 400 draws x 8 edges / 7 ops ≈ 457 each.
        assert min(ops[cell_type].values()) > 350
        assert inputs[cell_type] == legal


def test_draws_respect_primitives_and_num_nodes() -> None:
    rng = random.Random(0)
    g = random_genotype(rng, ("none", "skip_connect", "sep_conv_3x3"), num_nodes=2)
    assert g.num_nodes == 2 and g.normal_concat == (2, 3)
    assert {op for op, _ in g.normal + g.reduce} <= {"skip_connect", "sep_conv_3x3"}


def test_bad_draw_arguments() -> None:
    with pytest.raises(TypeError, match="random.Random"):
        random_genotype(0)  # type: ignore[arg-type]
    with pytest.raises(HyperDARTSError, match="primitives"):
        random_genotype(random.Random(0), ("none",))
    with pytest.raises(SamplingError, match="num_nodes"):
        random_genotype(random.Random(0), num_nodes=0)


# --- the reachable range --------------------------------------------------------------------------


def test_range_runs_from_all_pools_to_all_sep_conv_5x5() -> None:
    span = parameter_range(count)
    assert span.smallest == count(ALL_POOL)
    assert span.largest == count(uniform("sep_conv_5x5"))
    assert count(span.smallest_genotype) == span.smallest
    assert count(span.largest_genotype) == span.largest
    rng = random.Random(0)
    for _ in range(10):
        assert span.smallest < count(random_genotype(rng)) < span.largest


def test_range_without_pools_is_set_by_skip_connections() -> None:
    # A strided skip (reduce cell, from node 0 or 1) costs a factorized reduction: the fewest of
    # those is 3 (node 0 reads 0 and 1; node 1 reads one of them).
    span = parameter_range(fake_count, ("skip_connect", "sep_conv_3x3"))
    assert span.smallest == 1000 + 3 * 15
    assert span.largest == 1000 + 16 * 40


# --- matched random architectures -----------------------------------------------------------------


def targets() -> list[int]:
    low, high = count(ALL_POOL), count(DARTS_V2)
    return [high, low, (2 * low + high) // 3, (low + 2 * high) // 3, 2 * high]


@pytest.mark.parametrize("index", range(5))
def test_matched_genotype_is_within_tolerance(index: int) -> None:
    target = targets()[index]
    g = matched_random_genotype(target, count, tolerance=0.05, seed=index)
    # Counted again, independently of the sampler's cache.
    assert abs(count_eval_parameters(SPEC.build(g)) - target) <= 0.05 * target


def test_matched_genotype_is_deterministic_per_seed() -> None:
    target = count(DARTS_V2)
    first = matched_random_genotype(target, count, seed=7)
    assert matched_random_genotype(target, count, seed=7) == first


def test_matched_genotypes_stay_random() -> None:
    """Different seeds give different architectures of the same size, not one optimum."""
    found = [matched_random_genotype(1500, fake_count, tolerance=0.02, seed=s) for s in range(8)]
    assert all(abs(fake_count(g) - 1500) <= 30 for g in found)
    assert len(set(found)) == 8


def test_tight_tolerance_is_reached_with_more_evaluations() -> None:
    g = matched_random_genotype(1505, fake_count, tolerance=0.0, seed=0, max_evaluations=5000)
    assert fake_count(g) == 1505


def test_each_genotype_is_counted_once() -> None:
    seen: list[Genotype] = []

    def recording(g: Genotype) -> int:
        seen.append(g)
        return fake_count(g)

    matched_random_genotype(1780, recording, tolerance=0.001, seed=0)
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("factor", [10, None])
def test_unreachable_target_fails_fast_with_the_fix(factor: int | None) -> None:
    span = parameter_range(count)
    target = 1 if factor is None else factor * span.largest
    calls = []

    def counting(g: Genotype) -> int:
        calls.append(g)
        return count(g)

    with pytest.raises(SamplingError, match=f"target_params={target:,}") as err:
        matched_random_genotype(target, counting)
    message = str(err.value)
    closest = span.smallest if factor is None else span.largest
    assert f"{closest:,}" in message
    assert "tolerance" in message and "init_channels" in message
    assert len(calls) < 30  # only the range was counted: no walk


def test_exhausted_budget_names_the_closest_count() -> None:
    target = count(DARTS_V2) + 1
    with pytest.raises(SamplingError, match="after 20 genotypes") as err:
        matched_random_genotype(target, count, tolerance=0.0, max_evaluations=20)
    assert f"target_params={target:,}" in str(err.value)
    assert "closest had" in str(err.value) and "max_evaluations" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"target_params": 0}, "target_params"),
        ({"target_params": 1.5e4}, "target_params"),
        ({"tolerance": -0.1}, "tolerance"),
        ({"tolerance": float("nan")}, "tolerance"),
        ({"max_evaluations": 0}, "max_evaluations"),
    ],
)
def test_bad_matching_arguments_are_named(kwargs: dict, field: str) -> None:
    arguments = {"target_params": 20_000, "count": fake_count, **kwargs}
    with pytest.raises(SamplingError, match=field):
        matched_random_genotype(**arguments)
