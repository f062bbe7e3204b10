"""The benchmark script runs and writes what it promises (speed itself is never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_search_step_benchmark_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "search_step.py"), "--configs", "digits",
           "--orders", "1", "2", "--mode", "eager", "--repeats", "1", "--warmup", "0",
           "--device", "cpu", "--batch-size", "16", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "weight pass ms" in done.stdout
    rows = json.loads(out.read_text())["results"]
    assert [(r["config"], r["order"], r["mode"]) for r in rows] == [
        ("digits", 1, "eager"),
        ("digits", 2, "eager"),
    ]
    for r in rows:
        assert r["step_ms"] > 0 and r["weight_pass_ms"] > 0 and r["peak_memory_mb"] > 0
        assert r["batch_size"] == 16  # --batch-size replaces the config's 64
        assert r["share_source_ops"] is False and r["group_ops"] is False
        assert r["irreducible_passes"] == 2 and r["compile"] is False
        # the exact Hessian's double backward is measured as its own primitive
        hvp = r["hvp_pass_ms"] or 0.0
        assert (hvp > 0) == (r["order"] == 2)
        expected = 2 * r["weight_pass_ms"] + hvp
        assert abs(r["irreducible_ms"] - expected) < 1e-6 * expected
        assert r["first_step_s"] > 0


def test_gpu_check_script_is_valid_bash() -> None:
    script = REPO / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert '--mode "$mode"' in script.read_text()
