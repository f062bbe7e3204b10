"""Hypernetworks G_θ: t ∈ [0, 1] → α per cell type, checked against the formulas of METHOD.md."""

from __future__ import annotations

import pytest
import torch

from hyperdarts.hypernetworks import build_hypernetwork

EDGES, OPS = 5, 8
KINDS = ["constant", "linear", "piecewise", "mlp"]


def randomized(kind: str, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    net = build_hypernetwork(kind, EDGES, OPS, **kwargs).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p))
    return net


def stacked(alpha: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([alpha["normal"], alpha["reduce"]])


@pytest.mark.parametrize("kind", KINDS)
def test_output_keys_shapes_and_finiteness(kind):
    net = build_hypernetwork(kind, EDGES, OPS)
    for t in (0.0, 0.37, 1.0):
        alpha = net(t)
        assert set(alpha) == {"normal", "reduce"}
        for a in alpha.values():
            assert a.shape == (EDGES, OPS)
            assert a.dtype == torch.float32
            assert torch.isfinite(a).all()


@pytest.mark.parametrize("kind", KINDS)
def test_initial_mixing_is_nearly_uniform(kind):
    """As in DARTS (α ≈ 1e-3·N(0,1)), softmax(α) starts within 5% of uniform at every t (a
    default-initialised layer would give O(1) logits: tens of percent off)."""
    torch.manual_seed(0)
    net = build_hypernetwork(kind, EDGES, OPS)
    for t in (0.0, 0.5, 1.0):
        for a in net(t).values():
            p = torch.softmax(a, dim=-1)
            assert torch.allclose(p, torch.full_like(p, 1 / OPS), rtol=5e-2, atol=0)


def test_constant_ignores_t():
    net = randomized("constant")
    ref = stacked(net(0.0))
    for t in (0.1, 0.5, 1.0, 3.0):
        assert torch.equal(stacked(net(t)), ref)
    assert torch.equal(ref, net.alpha)


def test_linear_formula():
    net = randomized("linear")
    assert torch.equal(stacked(net(0.0)), net.intercept)
    assert torch.equal(stacked(net(1.0)), net.slope + net.intercept)
    for t in (0.25, 0.6):
        assert torch.allclose(stacked(net(t)), t * net.slope + net.intercept, rtol=0, atol=1e-14)
    # t is clamped to [0, 1]
    assert torch.equal(stacked(net(-0.5)), net.intercept)
    assert torch.equal(stacked(net(1.7)), net.slope + net.intercept)


@pytest.mark.parametrize("knots", [2, 3, 4, 5, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_piecewise_hits_every_anchor_exactly(knots, dtype):
    net = randomized("piecewise", dtype, num_knots=knots)
    assert net.anchors.shape == (knots, 2, EDGES, OPS)
    for k in range(knots):
        assert torch.equal(stacked(net(k / (knots - 1))), net.anchors[k]), k


@pytest.mark.parametrize("knots", [2, 4, 5])
def test_piecewise_interpolates_between_neighbours(knots):
    net = randomized("piecewise", num_knots=knots)
    a = net.anchors.detach()
    for k in range(knots - 1):
        for frac in (0.1, 0.5, 0.9):
            t = (k + frac) / (knots - 1)
            ref = (1 - frac) * a[k] + frac * a[k + 1]
            assert torch.allclose(stacked(net(t)), ref, rtol=0, atol=1e-12), (k, frac)
    # clamped outside [0, 1]
    assert torch.equal(stacked(net(-2.0)), a[0])
    assert torch.equal(stacked(net(5.0)), a[-1])


def test_piecewise_gradient_reaches_only_the_two_neighbouring_anchors():
    net = randomized("piecewise", num_knots=5)
    t = 0.6  # between knots 0.5 (index 2) and 0.75 (index 3), 2/5 of the way
    stacked(net(t)).sum().backward()
    grad = net.anchors.grad
    assert torch.allclose(grad[2], torch.full_like(grad[2], 0.6))
    assert torch.allclose(grad[3], torch.full_like(grad[3], 0.4))
    assert grad[[0, 1, 4]].abs().sum() == 0


def test_mlp_formula_and_dependence_on_t():
    net = randomized("mlp", mlp_hidden=6)
    first, _, last = net.net
    for t in (0.0, 0.3, 1.0):
        hidden = torch.tanh(first.weight[:, 0] * t + first.bias)
        ref = (last.weight @ hidden + last.bias).reshape(2, EDGES, OPS)
        assert torch.allclose(stacked(net(t)), ref, rtol=0, atol=1e-12)
    assert not torch.allclose(stacked(net(0.0)), stacked(net(1.0)))
    assert torch.equal(stacked(net(1.5)), stacked(net(1.0)))


@pytest.mark.parametrize(
    "kind,kwargs,field",
    [
        ("piecewise", {"num_knots": 1}, "num_knots"),
        ("mlp", {"mlp_hidden": 0}, "mlp_hidden"),
        ("quadratic", {}, "hypernet"),
    ],
)
def test_invalid_configuration_names_the_field(kind, kwargs, field):
    with pytest.raises(ValueError, match=field):
        build_hypernetwork(kind, EDGES, OPS, **kwargs)
