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
