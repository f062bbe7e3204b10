"""The memory estimator (benchmarks/memory.py) agrees with real tensors and writes what it promises.

Data-free tensors (meta, fake) must give the peak that the same tracker measures on real CPU
tensors, and torch.profiler's allocator events the same rise. The configuration is the smallest
there is (digits, 2 nodes per cell), so that real tensors cost little. Speed is never asserted.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def memory() -> ModuleType:
    sys.path.insert(0, str(REPO / "benchmarks"))  # as when run as a script: finds search_step
    try:
        return importlib.import_module("memory")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def _case(memory: ModuleType, batch_size: int, order: int) -> object:
    return memory.Case("digits", batch_size, order, "exact", num_nodes=2)


def test_estimate_equals_real_peak_and_grows(memory: ModuleType) -> None:
    first, second = _case(memory, 4, 1), _case(memory, 4, 2)
    meta = memory.Session(first, "meta")
    estimates = {c.order: meta.measure(c) for c in (first, second)}
    real = memory.Session(first, "real")
    reals = {1: real.measure(first, profiled=True), 2: real.measure(second)}
    for order in (1, 2):
        assert estimates[order]["peak_mib"] == pytest.approx(reals[order]["peak_mib"], rel=0.01)
        assert estimates[order]["live_at_start_mib"] > 0
    # The profiler counts every CPU allocation, the tracker only op outputs: here they agree.
    assert reals[1]["profiler_rise_mib"] == pytest.approx(reals[1]["tracker_rise_mib"], rel=0.05)
    # The exact Hessian keeps the graph of the training gradient for its double backward.
    assert estimates[2]["peak_mib"] > 1.5 * estimates[1]["peak_mib"]
    assert estimates[2]["phase_peaks_cuda_mib"]["architecture"] == pytest.approx(
        estimates[2]["peak_cuda_mib"]
    )
    bigger = meta.measure(_case(memory, 8, 1))
    rise = {b: r["peak_mib"] - r["live_at_start_mib"] for b, r in ((4, estimates[1]), (8, bigger))}
    assert rise[8] > 1.5 * rise[4]  # activations scale with the batch
    assert bigger["persistent_mib"]["parameters"] == estimates[1]["persistent_mib"]["parameters"]
    assert estimates[1]["peak_cuda_mib"] >= estimates[1]["peak_mib"]  # 512-byte blocks


def test_checkpointed_cells_cut_the_first_order_peak(memory: ModuleType) -> None:
    """Only the cells' inputs are kept for backward: well under the plain peak above start."""
    import dataclasses

    case = memory.Case("digits", 16, 1, "exact", num_nodes=2)
    plain = memory.Session(case, "meta").measure(case)
    checkpointed_case = dataclasses.replace(case, mode="checkpointed")
    checkpointed = memory.Session(checkpointed_case, "meta").measure(checkpointed_case)
    rise = [r["peak_mib"] - r["live_at_start_mib"] for r in (plain, checkpointed)]
    assert rise[1] < 0.75 * rise[0]


def test_fake_tensors_agree_with_real_tensors(memory: ModuleType) -> None:
    case = _case(memory, 4, 1)
    fake = memory.Session(case, "fake").measure(case)
    real = memory.Session(case, "real").measure(case)
    assert fake["peak_mib"] == pytest.approx(real["peak_mib"], rel=0.01)


def test_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "memory.py"), "--configs", "digits",
           "--num-nodes", "2", "--batch-sizes", "2", "--orders", "1", "2", "--hessian",
           "finite_difference", "--gpu-mib", "1024", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "peak MiB" in done.stdout and "budget MiB" in done.stdout
    data = json.loads(out.read_text())
    assert data["meta"]["not_modelled"] and data["meta"]["margin"] == 0.2
    rows = data["results"]
    assert [(r["order"], r["hessian"]) for r in rows] == [(1, None), (2, "finite_difference")]
    for r in rows:
        assert r["config"] == "digits" and r["batch_size"] == 2 and r["num_nodes"] == 2
        assert 0 < r["live_at_start_mib"] < r["peak_cuda_mib"]
        assert r["budget_mib"] == pytest.approx(r["peak_cuda_mib"] * 1.2 + 1024)
        assert r["gpu_mib"] == 1024 and r["fits"] is False
