"""λ sampling, temperature schedule, softmax / Gumbel-softmax relaxation."""

from __future__ import annotations

import math

import pytest
import torch

from hyperdarts.relaxation import (
    LambdaSampler,
    TemperatureSchedule,
    build_relaxation,
    relax,
    sample_gumbel,
)

EULER_GAMMA = 0.5772156649015329


# --- λ ----------------------------------------------------------------------------------------


def ks_uniform(u: list[float]) -> float:
    """Kolmogorov–Smirnov distance of a sample from U(0, 1)."""
    u = sorted(u)
    n = len(u)
    return max(max((i + 1) / n - x, x - i / n) for i, x in enumerate(u))


def test_lambda_samples_are_log_uniform_within_range():
    lo, hi = 1e-4, 10.0
    sampler = LambdaSampler(lo, hi)
    g = torch.Generator().manual_seed(0)
    n = 20_000
    lams = [sampler.sample(g) for _ in range(n)]
    assert all(lo <= lam <= hi for lam in lams)
    u = [(math.log(lam) - math.log(lo)) / (math.log(hi) - math.log(lo)) for lam in lams]
    # KS critical value at significance 0.001 is 1.95/√n.
    assert ks_uniform(u) < 1.95 / math.sqrt(n)
    # Deciles of log λ: 2000 ± 5σ (σ ≈ 42) each.
    counts = [0] * 10
    for x in u:
        counts[min(int(x * 10), 9)] += 1
    assert all(abs(c - n / 10) < 5 * math.sqrt(n * 0.09) for c in counts), counts
    # The test discriminates: λ uniform on [lo, hi] has almost everything in the top decade.
    uniform_lams = [lo + (hi - lo) * x for x in torch.rand(n, generator=g).tolist()]
    u_bad = [(math.log(lam) - math.log(lo)) / (math.log(hi) - math.log(lo)) for lam in uniform_lams]
    assert ks_uniform(u_bad) > 0.5


def test_lambda_sampling_is_reproducible():
    sampler = LambdaSampler(1e-3, 1.0)
    a = [sampler.sample(torch.Generator().manual_seed(3)) for _ in range(3)]
    g = torch.Generator().manual_seed(3)
    b = [sampler.sample(g) for _ in range(3)]
    assert a[0] == b[0] and len(set(b)) == 3


def test_normalize_endpoints_and_midpoint():
    sampler = LambdaSampler(1e-3, 1.0)
    assert sampler.normalize(1e-3) == 0.0
    assert sampler.normalize(1.0) == 1.0
    assert sampler.normalize(math.sqrt(1e-3)) == pytest.approx(0.5, abs=1e-12)
    assert sampler.normalize(1e-2) == pytest.approx(1 / 3, abs=1e-12)


@pytest.mark.parametrize("num", [2, 3, 5, 9])
def test_grid_is_log_spaced_and_includes_both_ends(num):
    lo, hi = 2e-4, 0.5
    grid = LambdaSampler(lo, hi).grid(num)
    assert len(grid) == num
    assert grid[0] == pytest.approx(lo, rel=1e-12)
    assert grid[-1] == pytest.approx(hi, rel=1e-12)
    ratio = (hi / lo) ** (1 / (num - 1))
    for a, b in zip(grid, grid[1:]):
        assert b / a == pytest.approx(ratio, rel=1e-12)


def test_grid_of_one_and_invalid_grid():
    sampler = LambdaSampler(1e-3, 1.0)
    assert sampler.grid(1) == [pytest.approx(1e-3, rel=1e-12)]
    with pytest.raises(ValueError):
        sampler.grid(0)


@pytest.mark.parametrize(
    "lo,hi,field",
    [
        (0.0, 1.0, "lambda_min"),
        (-1e-3, 1.0, "lambda_min"),
        (float("nan"), 1.0, "lambda_min"),
        (float("nan"), float("nan"), "lambda_min"),
        (2.0, 1.0, "lambda_max"),
    ],
)
def test_invalid_lambda_range_names_the_field(lo, hi, field):
    with pytest.raises(ValueError, match=field):
        LambdaSampler(lo, hi)


# --- temperature ------------------------------------------------------------------------------


def test_temperature_schedule_is_exponential_and_positive():
    sched = TemperatureSchedule(2.0, 0.02)
    assert sched(0.0) == pytest.approx(2.0, rel=1e-12)
    assert sched(1.0) == pytest.approx(0.02, rel=1e-12)
    assert sched(0.5) == pytest.approx(math.sqrt(2.0 * 0.02), rel=1e-12)
    values = [sched(p / 100) for p in range(-50, 151)]
    assert all(v >= 0.02 * (1 - 1e-12) for v in values)  # never 0, never below tau_end
    assert all(a >= b for a, b in zip(values, values[1:]))  # non-increasing
    assert TemperatureSchedule(1.0, 1e-30)(1.0) > 0
    assert TemperatureSchedule()(0.7) == 1.0


@pytest.mark.parametrize(
    "start,end,field", [(0.0, 1.0, "tau_start"), (1.0, 0.0, "tau_end"), (1.0, -0.5, "tau_end")]
)
def test_temperature_rejects_non_positive(start, end, field):
    with pytest.raises(ValueError, match=field):
        TemperatureSchedule(start, end)


# --- relax ------------------------------------------------------------------------------------


def test_relax_is_softmax_over_temperature():
    g = torch.Generator().manual_seed(0)
    alpha = {ct: torch.randn(5, 8, generator=g, dtype=torch.float64) for ct in ("normal", "reduce")}
    for tau in (0.3, 1.0, 4.0):
        probs = relax(alpha, tau)
        for ct, a in alpha.items():
            e = torch.exp(a / tau)
            assert torch.allclose(probs[ct], e / e.sum(-1, keepdim=True), rtol=1e-12, atol=0)
            assert torch.allclose(probs[ct].sum(-1), torch.ones(5, dtype=torch.float64))


def test_relax_with_noise_rows_sum_to_one():
    g = torch.Generator().manual_seed(1)
    alpha = {ct: torch.randn(5, 8, generator=g) for ct in ("normal", "reduce")}
    for shape in ((5, 8), (6, 5, 8)):
        noise = {ct: sample_gumbel(shape, g) for ct in alpha}
        probs = relax(alpha, 0.5, noise)
        for ct, p in probs.items():
            assert p.shape == shape
            assert p.dtype == torch.float32  # the noise follows α's dtype
            assert torch.allclose(p.sum(-1), torch.ones(shape[:-1]), atol=1e-6)
            assert (p >= 0).all()
            ref = torch.softmax((alpha[ct] + noise[ct].float()) / 0.5, dim=-1)
            assert torch.allclose(p, ref, atol=1e-7)


def test_gumbel_is_reproducible_with_same_generator_state():
    g = torch.Generator().manual_seed(42)
    state = g.get_state()
    a = sample_gumbel((4, 5, 8), g)
    b = sample_gumbel((4, 5, 8), g)
    g.set_state(state)
    c = sample_gumbel((4, 5, 8), g)
    assert torch.equal(a, c)
    assert not torch.equal(a, b)
    assert torch.equal(a, sample_gumbel((4, 5, 8), torch.Generator().manual_seed(42)))


def test_gumbel_distribution():
    g = torch.Generator().manual_seed(0)
    x = sample_gumbel((200_000,), g)
    assert torch.isfinite(x).all()
    assert float(x.mean()) == pytest.approx(EULER_GAMMA, abs=0.015)
    assert float(x.var()) == pytest.approx(math.pi**2 / 6, abs=0.03)
    # Gumbel-max trick: argmax(α + g) is distributed as softmax(α).
    alpha = torch.tensor([0.5, -1.0, 1.5, 0.0], dtype=torch.float64)
    n = 100_000
    winners = (alpha + sample_gumbel((n, 4), g)).argmax(-1)
    freq = torch.bincount(winners, minlength=4).double() / n
    assert torch.allclose(freq, torch.softmax(alpha, -1), atol=0.01)


# --- fixed λ ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.0, 0.1])
def test_fixed_lambda(value):
    sampler = LambdaSampler(value, value)
    g, ref = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert [sampler.sample(g) for _ in range(3)] == [value] * 3
    # the generator advances as for a range, so the other draws of a run do not shift
    for _ in range(3):
        torch.rand((), generator=ref, dtype=torch.float64)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=ref))
    assert sampler.normalize(value) == 0.0
    assert sampler.grid(9) == [value]


def test_fixed_lambda_must_be_non_negative():
    with pytest.raises(ValueError, match="lambda_min = lambda_max = -1"):
        LambdaSampler(-1.0, -1.0)


# --- Fair DARTS (sigmoid) and DrNAS (Dirichlet) -----------------------------------------------


def alphas(seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {
        ct: scale * torch.randn(5, 8, generator=g, dtype=torch.float64)
        for ct in ("normal", "reduce")
    }


def test_sigmoid_relaxation_and_zero_one_loss():
    relax_ = build_relaxation("sigmoid", zero_one_weight=10.0)
    alpha = alphas()
    weights = relax_.mean(alpha, 0.5)
    for ct, a in alpha.items():
        assert torch.allclose(weights[ct], 1 / (1 + torch.exp(-a / 0.5)), rtol=1e-12, atol=0)
    assert relax_.sample(alpha, 0.5, None) is not None
    # Hand value at α = 0 (σ = 0.5 everywhere): the loss is 0 and at its maximum.
    zero = {ct: torch.zeros(5, 8, dtype=torch.float64) for ct in alpha}
    assert float(relax_.regularizer(zero)) == 0.0
    a = {ct: torch.full((5, 8), math.log(3.0), dtype=torch.float64) for ct in alpha}  # σ = 0.75
    assert float(relax_.regularizer(a)) == pytest.approx(-10.0 * 0.0625, rel=1e-12)
    # Descent pushes each weight away from 0.5: the gradient has the sign opposite to α.
    a = {ct: v.clone().requires_grad_(True) for ct, v in alpha.items()}
    relax_.regularizer(a).backward()
    for ct in alpha:
        assert (torch.sign(a[ct].grad) == -torch.sign(alpha[ct])).all()
    assert build_relaxation("sigmoid", zero_one_weight=0.0).regularizer(alpha) is None


def test_dirichlet_relaxation_mean_samples_and_kl():
    relax_ = build_relaxation("dirichlet", dirichlet_kl_weight=1.0, dirichlet_prior=1.0)
    alpha = alphas(1, scale=0.8)
    mean = relax_.mean(alpha, 1.0)
    g = torch.Generator().manual_seed(0)
    noise = relax_.draw_noise((5, 8), 4, g)
    one = relax_.sample(alpha, 1.0, noise)
    assert all(torch.equal(one[ct], relax_.sample(alpha, 1.0, noise)[ct]) for ct in alpha)
    other = relax_.sample(alpha, 1.0, relax_.draw_noise((5, 8), 4, g))
    assert not torch.equal(one["normal"], other["normal"])
    draws = []
    for _ in range(3000):
        s = relax_.sample(alpha, 1.0, relax_.draw_noise((5, 8), 4, g))
        assert torch.allclose(s["normal"].sum(-1), torch.ones(5, dtype=torch.float64))
        assert (s["normal"] > 0).all()
        draws.append(s["normal"])
    emp = torch.stack(draws).mean(0)
    for ct, a in alpha.items():
        beta = torch.where(a > 0, a + 1, torch.exp(a))  # elu(α) + 1
        assert torch.allclose(mean[ct], beta / beta.sum(-1, keepdim=True), rtol=1e-12, atol=0)
    assert torch.allclose(emp, mean["normal"], atol=0.02)
    # α = 0 gives β = 1 = the prior: KL 0; elsewhere KL > 0.
    zero = {ct: torch.zeros(5, 8, dtype=torch.float64) for ct in alpha}
    assert float(relax_.regularizer(zero)) == pytest.approx(0.0, abs=1e-12)
    assert float(relax_.regularizer(alpha)) > 0.01


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(kind="sparsemax"), "relaxation='sparsemax'"),
        (dict(kind="sigmoid", zero_one_weight=-1.0), "zero_one_weight"),
        (dict(kind="dirichlet", dirichlet_kl_weight=float("nan")), "dirichlet_kl_weight"),
        (dict(kind="dirichlet", dirichlet_prior=0.0), "dirichlet_prior"),
    ],
)
def test_bad_relaxation_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(")):
        build_relaxation(**kwargs)
