"""From logits α to mixing weights, and the distribution of λ the search is trained over.

Relaxations: softmax (DARTS), gumbel (Gumbel-softmax), sigmoid (Fair DARTS, with its zero-one
loss) and dirichlet (DrNAS, with its KL regularizer). λ: log-uniform on [λ_min, λ_max], or one
fixed value when λ_min = λ_max (a fixed-penalty DARTS search; 0 for no penalty at all).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet, kl_divergence

from hyperdarts.errors import ConfigError
from hyperdarts.search_space.networks import CELL_TYPES

RelaxationKind = Literal["softmax", "gumbel", "sigmoid", "dirichlet"]
Weights = dict[str, torch.Tensor]
Noise = dict[str, torch.Tensor]


class LambdaSampler:
    """λ ~ log-uniform on [λ_min, λ_max]; the hypernetwork sees t = normalized log λ ∈ [0, 1].

    λ_min = λ_max fixes λ (t = 0 always): DARTS with a fixed complexity penalty, one search per λ,
    and λ = 0 is plain DARTS without a penalty.
    """

    def __init__(self, lambda_min: float, lambda_max: float) -> None:
        self.fixed = lambda_min == lambda_max
        if self.fixed:
            if not (lambda_min >= 0 and math.isfinite(lambda_min)):
                raise ConfigError(
                    f"lambda_min = lambda_max = {lambda_min}: a fixed λ must be a finite number "
                    ">= 0"
                )
            self.value = float(lambda_min)
            return
        if not lambda_min > 0:
            raise ConfigError(
                f"lambda_min={lambda_min}: must be > 0 (λ is sampled on a log scale); for a fixed "
                "λ set lambda_min = lambda_max"
            )
        if not lambda_max > lambda_min:
            raise ConfigError(
                f"lambda_max={lambda_max} must be greater than lambda_min={lambda_min} (or equal "
                "to it, for a fixed λ)"
            )
        self.log_min, self.log_max = math.log(lambda_min), math.log(lambda_max)

    def normalize(self, lam: float) -> float:
        if self.fixed:
            return 0.0
        return (math.log(lam) - self.log_min) / (self.log_max - self.log_min)

    def sample(self, generator: torch.Generator) -> float:
        u = torch.rand((), generator=generator, dtype=torch.float64).item()
        if self.fixed:  # drawn all the same, so the generator's stream does not depend on λ's range
            return self.value
        return math.exp(self.log_min + u * (self.log_max - self.log_min))

    def grid(self, num: int) -> list[float]:
        """``num`` log-spaced values from λ_min to λ_max inclusive (one value when λ is fixed)."""
        if num < 1:
            raise ConfigError(f"grid size {num}: need at least 1 value")
        if self.fixed:
            return [self.value]
        if num == 1:
            return [math.exp(self.log_min)]
        step = (self.log_max - self.log_min) / (num - 1)
        return [math.exp(self.log_min + k * step) for k in range(num)]


class TemperatureSchedule:
    """τ decays exponentially from ``tau_start`` to ``tau_end`` > 0 over the search; never 0."""

    def __init__(self, tau_start: float = 1.0, tau_end: float = 1.0) -> None:
        if not (0 < tau_start < math.inf and 0 < tau_end < math.inf):
            raise ConfigError(
                f"tau_start={tau_start}, tau_end={tau_end}: both must be positive and finite"
            )
        self.tau_start, self.tau_end = tau_start, tau_end

    def __call__(self, progress: float) -> float:
        progress = min(max(progress, 0.0), 1.0)
        return self.tau_start * (self.tau_end / self.tau_start) ** progress


def sample_gumbel(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-12)))


def relax(alpha: Weights, tau: float, noise: dict[str, torch.Tensor] | None = None) -> Weights:
    """softmax((α + g)/τ) per edge; ``noise`` g is Gumbel (optionally per example) or None."""
    out = {}
    for name, a in alpha.items():
        logits = a if noise is None else a + noise[name].to(a)
        out[name] = torch.softmax(logits / tau, dim=-1)
    return out


# --- relaxations ------------------------------------------------------------------------------


class Relaxation:
    """How logits α become the supernet's mixing weights, and what the method adds to the loss.

    ``mean`` gives the noise-free weights that validation, derivation and the complexity penalty
    use. ``sample`` gives the training weights for noise drawn by ``draw_noise``; it is a
    deterministic function of (α, noise), so one draw serves every pass of an architecture step
    (fresh noise per pass would make the second-order gradient wrong). ``regularizer`` is the
    method's own architecture loss term (None for DARTS).
    """

    def mean(self, alpha: Weights, tau: float) -> Weights:
        raise NotImplementedError

    def draw_noise(
        self, shape: tuple[int, ...], batch_size: int, generator: torch.Generator
    ) -> Noise | None:
        return None

    def sample(self, alpha: Weights, tau: float, noise: Noise | None) -> Weights:
        return self.mean(alpha, tau)

    def regularizer(self, alpha: Weights) -> torch.Tensor | None:
        return None


class SoftmaxRelaxation(Relaxation):
    """DARTS: softmax(α/τ) over the ops of each edge; the ops compete."""

    def mean(self, alpha: Weights, tau: float) -> Weights:
        return relax(alpha, tau)


class GumbelRelaxation(SoftmaxRelaxation):
    """Gumbel-softmax: softmax((α + g)/τ), g ~ Gumbel, one sample per example or per batch."""

    def __init__(self, per_example: bool = True) -> None:
        self.per_example = per_example

    def draw_noise(
        self, shape: tuple[int, ...], batch_size: int, generator: torch.Generator
    ) -> Noise:
        shape = (batch_size, *shape) if self.per_example else shape
        return {ct: sample_gumbel(shape, generator) for ct in CELL_TYPES}

    def sample(self, alpha: Weights, tau: float, noise: Noise | None) -> Weights:
        return relax(alpha, tau, noise)


class SigmoidRelaxation(Relaxation):
    """Fair DARTS: each op's weight σ(α/τ) on its own, so ops cooperate instead of competing, and
    the zero-one loss −w₀₁·mean((σ(α) − 0.5)²) pushes every weight towards 0 or 1.

    Derivation ranks edges and ops by σ (the DARTS rule applied to independent weights); Fair
    DARTS's threshold, which may leave a node with fewer than two inputs, is not used, because a
    genotype has exactly two inputs per node.
    """

    def __init__(self, zero_one_weight: float = 10.0) -> None:
        if not (zero_one_weight >= 0 and math.isfinite(zero_one_weight)):
            raise ConfigError(f"zero_one_weight={zero_one_weight}: must be a finite number >= 0")
        self.zero_one_weight = zero_one_weight

    def mean(self, alpha: Weights, tau: float) -> Weights:
        return {ct: torch.sigmoid(a / tau) for ct, a in alpha.items()}

    def regularizer(self, alpha: Weights) -> torch.Tensor | None:
        if self.zero_one_weight == 0:
            return None
        sig = torch.cat([torch.sigmoid(a).reshape(-1) for a in alpha.values()])
        return -self.zero_one_weight * ((sig - 0.5) ** 2).mean()


class DirichletRelaxation(Relaxation):
    """DrNAS: the mixing weights of each edge are drawn from Dirichlet(β), β = elu(α) + 1 > 0,
    reparameterized so the gradient reaches α; mean weights β/Σβ; the KL divergence to a
    symmetric Dirichlet(prior) prior, times ``kl_weight``, regularizes β. τ is not used.

    The sample is drawn on the CPU from a seed taken from the search's generator, so it is
    reproducible and identical in every pass of a step.
    """

    def __init__(self, kl_weight: float = 1e-3, prior: float = 1.0) -> None:
        if not (kl_weight >= 0 and math.isfinite(kl_weight)):
            raise ConfigError(f"dirichlet_kl_weight={kl_weight}: must be a finite number >= 0")
        if not (prior > 0 and math.isfinite(prior)):
            raise ConfigError(f"dirichlet_prior={prior}: must be a positive number")
        self.kl_weight, self.prior = kl_weight, prior

    @staticmethod
    def concentration(alpha: torch.Tensor) -> torch.Tensor:
        return F.elu(alpha) + 1.0

    def mean(self, alpha: Weights, tau: float) -> Weights:
        out = {}
        for ct, a in alpha.items():
            beta = self.concentration(a)
            out[ct] = beta / beta.sum(-1, keepdim=True)
        return out

    def draw_noise(
        self, shape: tuple[int, ...], batch_size: int, generator: torch.Generator
    ) -> Noise:
        seed = torch.randint(2**62, (), generator=generator)
        return {ct: seed + k for k, ct in enumerate(CELL_TYPES)}

    def sample(self, alpha: Weights, tau: float, noise: Noise | None) -> Weights:
        if noise is None:
            return self.mean(alpha, tau)
        out = {}
        for ct, a in alpha.items():
            beta = self.concentration(a)
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(int(noise[ct]))
                draw = Dirichlet(beta.cpu().double()).rsample()
            out[ct] = draw.to(beta)
        return out

    def regularizer(self, alpha: Weights) -> torch.Tensor | None:
        if self.kl_weight == 0:
            return None
        total = 0.0
        for a in alpha.values():
            beta = self.concentration(a)
            prior = Dirichlet(torch.full_like(beta, self.prior))
            total = total + kl_divergence(Dirichlet(beta), prior).sum()
        return self.kl_weight * total


def build_relaxation(
    kind: RelaxationKind,
    gumbel_per_example: bool = True,
    zero_one_weight: float = 10.0,
    dirichlet_kl_weight: float = 1e-3,
    dirichlet_prior: float = 1.0,
) -> Relaxation:
    if kind == "softmax":
        return SoftmaxRelaxation()
    if kind == "gumbel":
        return GumbelRelaxation(gumbel_per_example)
    if kind == "sigmoid":
        return SigmoidRelaxation(zero_one_weight)
    if kind == "dirichlet":
        return DirichletRelaxation(dirichlet_kl_weight, dirichlet_prior)
    raise ConfigError(
        f"relaxation={kind!r}: choose softmax (DARTS), gumbel, sigmoid (Fair DARTS) or "
        "dirichlet (DrNAS)"
    )
