"""Property-based tests: the genotype and family JSON loaders accept exactly what they write and
refuse anything else with their own error (never a stray exception), and the hypernetworks give
finite logits of the right shape over the whole λ range."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperdarts.family import FamilyError, FamilyMember, load_family, save_family
from hyperdarts.hypernetworks import build_hypernetwork
from hyperdarts.relaxation import LambdaSampler, relax
from hyperdarts.search_space.cells import num_edges
from hyperdarts.search_space.genotypes import Genotype, GenotypeError, load_genotype, save_genotype
from hyperdarts.search_space.ops import OPS

OP_NAMES = [op for op in OPS if op != "none"]
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def genotypes(draw: st.DrawFn) -> Genotype:
    """Every valid genotype: 1 to 5 nodes, two edges each, any op, any earlier node, any concat."""
    nodes = draw(st.integers(1, 5))

    def cell() -> list[tuple[str, int]]:
        return [
            (draw(st.sampled_from(OP_NAMES)), draw(st.integers(0, 1 + j)))
            for j in range(nodes)
            for _ in range(2)
        ]

    def concat() -> list[int]:
        return draw(st.lists(st.integers(0, 1 + nodes), min_size=1, unique=True))

    return Genotype(normal=cell(), normal_concat=concat(), reduce=cell(), reduce_concat=concat())


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid document with one field, or one entry of a list field, replaced by any JSON."""
    data = json.loads(json.dumps(draw(base)))
    target = data
    key = draw(st.sampled_from(sorted(target)))
    while isinstance(target[key], (dict, list)) and target[key] and draw(st.booleans()):
        target = target[key]
        key = draw(
            st.sampled_from(sorted(target) if isinstance(target, dict) else range(len(target)))
        )
    target[key] = draw(json_values)
    return data


genotype_dicts = genotypes().map(Genotype.to_dict)


@st.composite
def families(draw: st.DrawFn) -> list[FamilyMember]:
    members = []
    for _ in range(draw(st.integers(0, 3))):
        lambdas = draw(st.lists(st.floats(1e-6, 1e6), min_size=1, max_size=3))
        members.append(
            FamilyMember(
                lambdas=lambdas,
                genotype=draw(genotypes()),
                params=draw(st.integers(0, 10**9)),
                flops=draw(st.integers(0, 10**12)),
                expected_complexity=draw(st.floats(0, 1)),
                one_shot_accuracy=draw(st.none() | st.floats(0, 1)),
            )
        )
    return members


def family_dicts(members: list[FamilyMember], tmp: Path) -> dict[str, Any]:
    return json.loads(save_family(members, tmp / "family.json", meta={"note": "x"}).read_text())


# --- genotypes ------------------------------------------------------------------------------------


@SETTINGS
@given(genotype=genotypes())
def test_a_genotype_round_trips_through_its_file(tmp_path: Path, genotype: Genotype) -> None:
    assert load_genotype(save_genotype(genotype, tmp_path / "g.json")) == genotype


@SETTINGS
@given(data=json_values | mutated(genotype_dicts))
def test_a_genotype_document_is_read_or_refused_with_a_genotype_error(data: Any) -> None:
    try:
        genotype = Genotype.from_dict(data, source="g.json")
    except GenotypeError as err:
        assert str(err).startswith("g.json")
    else:
        assert Genotype.from_dict(genotype.to_dict()) == genotype


@SETTINGS
@given(content=st.binary(max_size=200) | json_values.map(json.dumps).map(str.encode))
def test_any_file_given_as_a_genotype_is_read_or_refused_with_a_genotype_error(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "g.json"
    path.write_bytes(content)
    try:
        load_genotype(path)
    except GenotypeError as err:
        assert str(path) in str(err)


# --- families -------------------------------------------------------------------------------------


@SETTINGS
@given(members=families())
def test_a_family_round_trips_through_its_file(tmp_path: Path, members: list) -> None:
    loaded, meta = load_family(save_family(members, tmp_path / "family.json", meta={"a": 1}))
    assert loaded == members and meta == {"a": 1}


@SETTINGS
@given(data=st.data())
def test_a_family_document_is_read_or_refused_with_a_family_error(
    tmp_path: Path, data: st.DataObject
) -> None:
    valid = family_dicts(data.draw(families()), tmp_path)
    document = data.draw(json_values | mutated(st.just(valid)))
    path = tmp_path / "family.json"
    path.write_text(json.dumps(document))
    try:
        members, _ = load_family(path)
    except FamilyError as err:
        assert str(path) in str(err)
    else:
        assert all(math.isfinite(m.expected_complexity) for m in members)


@SETTINGS
@given(content=st.binary(max_size=200))
def test_any_file_given_as_a_family_is_read_or_refused_with_a_family_error(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "family.json"
    path.write_bytes(content)
    with pytest.raises(FamilyError, match=str(path)):
        load_family(path)


# --- hypernetworks --------------------------------------------------------------------------------


@SETTINGS
@given(
    kind=st.sampled_from(["constant", "linear", "piecewise", "mlp"]),
    nodes=st.integers(1, 5),
    num_ops=st.integers(1, 8),
    knots=st.integers(2, 7),
    hidden=st.integers(1, 16),
    scale=st.floats(1e-3, 1e3),
    low=st.floats(1e-12, 1e3),
    ratio=st.floats(1.000001, 1e12),
    where=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_hypernetwork_outputs_are_finite_and_shaped_over_the_whole_lambda_range(
    kind: str,
    nodes: int,
    num_ops: int,
    knots: int,
    hidden: int,
    scale: float,
    low: float,
    ratio: float,
    where: float,
    seed: int,
) -> None:
    """At λ_min, λ_max and anywhere between (log-uniformly), whatever the weights' scale."""
    torch.manual_seed(seed)
    hypernet = build_hypernetwork(kind, num_edges(nodes), num_ops, knots, hidden)
    with torch.no_grad():
        for p in hypernet.parameters():
            p.mul_(scale / 1e-3)  # from near-uniform initial logits to trained-like ones
    sampler = LambdaSampler(low, low * ratio)
    for lam in (low, low * ratio, math.exp(math.log(low) + where * math.log(ratio))):
        alpha = hypernet(sampler.normalize(lam))
        assert set(alpha) == {"normal", "reduce"}
        for logits in alpha.values():
            assert logits.shape == (num_edges(nodes), num_ops)
            assert bool(torch.isfinite(logits).all())
        for probs in relax(alpha, tau=0.2).values():
            assert bool(torch.isfinite(probs).all())
            assert torch.allclose(probs.sum(-1), torch.ones(num_edges(nodes)))
