"""Shared test setup: W&B never leaves the machine, runs write under a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The tests' networks are tiny: one intra-op thread is as fast, and does not collapse when the
# machine is shared (two threads fighting for two busy cores made single steps 100x slower).
torch.set_num_threads(1)
CONFIGS = REPO / "configs"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    monkeypatch.delenv("HYPERDARTS_RUN_DIR", raising=False)
    for launcher_variable in ("LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(launcher_variable, raising=False)
    monkeypatch.chdir(tmp_path)


def search_steps(module, steps: int = 3) -> dict[str, list]:
    """Full search steps as training_step takes them (architecture step, then the weight step
    through ``module.supernet()``) on fixed 8x8 batches, each at a new λ, temperature and noise:
    the θ gradient of each architecture step, each weight loss, the number of graphs torch.compile
    has made after each step, and the genotypes derived at the end."""
    import torch.nn.functional as F
    from torch._dynamo.utils import counters

    g = torch.Generator().manual_seed(4)
    opt_w = torch.optim.SGD(module.net.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    opt_a = torch.optim.Adam(module.hypernet.parameters(), lr=0.05)
    out: dict[str, list] = {"arch_grads": [], "weight_losses": [], "graphs": []}
    for step in range(steps):
        batch = {
            k: (torch.randn(8, 1, 8, 8, generator=g, dtype=torch.float64),
                torch.randint(0, 5, (8,), generator=g))
            for k in ("weight", "arch")
        }  # fmt: skip
        lam = module.sampler.sample(module.rng)
        module.tau = 1.0 / (step + 1)
        module.begin_step()
        opt_a.zero_grad()
        surrogate, _, _ = module.architecture_objective(batch, lam, opt_w)
        surrogate.backward()
        out["arch_grads"].append(
            torch.cat([p.grad.reshape(-1) for p in module.hypernet.parameters()])
        )
        opt_a.step()
        opt_w.zero_grad()
        x, y = batch["weight"]
        with torch.no_grad():
            probs = module.relaxation.sample(module.alpha(lam), module.tau, module._noise(8))
        loss = F.cross_entropy(module.supernet()(dict(module.net.named_parameters()), x, probs), y)
        loss.backward()
        opt_w.step()
        out["weight_losses"].append(loss.detach())
        out["graphs"].append(counters["stats"]["unique_graphs"])
    out["genotypes"] = [module.genotype(lam) for lam in module.val_grid]
    return out
