"""From logits α to mixing weights, and the distribution of λ the search is trained over."""

from __future__ import annotations

import math
from typing import Literal

import torch

from hyperdarts.errors import ConfigError

RelaxationKind = Literal["softmax", "gumbel"]


class LambdaSampler:
    """λ ~ log-uniform on [λ_min, λ_max]; the hypernetwork sees t = normalized log λ ∈ [0, 1]."""

    def __init__(self, lambda_min: float, lambda_max: float) -> None:
        if not lambda_min > 0:
            raise ConfigError(f"lambda_min={lambda_min}: must be > 0 (λ is sampled on a log scale)")
        if not lambda_max > lambda_min:
            raise ConfigError(
                f"lambda_max={lambda_max} must be greater than lambda_min={lambda_min}"
            )
        self.log_min, self.log_max = math.log(lambda_min), math.log(lambda_max)

    def normalize(self, lam: float) -> float:
        return (math.log(lam) - self.log_min) / (self.log_max - self.log_min)

    def sample(self, generator: torch.Generator) -> float:
        u = torch.rand((), generator=generator, dtype=torch.float64).item()
        return math.exp(self.log_min + u * (self.log_max - self.log_min))

    def grid(self, num: int) -> list[float]:
        """``num`` log-spaced values from λ_min to λ_max inclusive."""
        if num < 1:
            raise ConfigError(f"grid size {num}: need at least 1 value")
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


def relax(
    alpha: dict[str, torch.Tensor], tau: float, noise: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """softmax((α + g)/τ) per edge; ``noise`` g is Gumbel (optionally per example) or None.

    The caller draws the noise once and passes the same sample to every pass of one architecture
    step: fresh noise per pass makes the second-order gradient wrong.
    """
    out = {}
    for name, a in alpha.items():
        logits = a if noise is None else a + noise[name].to(a)
        out[name] = torch.softmax(logits / tau, dim=-1)
    return out
