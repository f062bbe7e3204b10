"""Time search steps of hyperdarts: ``python benchmarks/search_step.py --configs digits small``.

For each named configuration and order it reports the median time (after warm-up) of
- one weight-only forward+backward of the supernet (the unit of irreducible work),
- for the exact Hessian, the bare primitive it needs: a training forward+backward keeping the graph,
  then the double backward of (∇_w L · v) to the mixing weights,
- one full search step: the architecture step (hypernetwork, complexity term and, for second order,
  the unrolled step) followed by the weight step with gradient clipping,
and the ratio of the step to the irreducible work, the sum of the primitives the step cannot avoid,
each measured in the same run: 2 forward+backward passes for first order; for second order with the
finite difference 5 (train, validation, w+, w-, weight step); with the exact Hessian 2 passes
(validation at w', weight step) plus the double-backward primitive. The first step's time is
reported too: with ``compile`` it is mostly compilation.

Modes: ``eager`` is the plain per-edge supernet (every fast-path switch off), ``fast`` the defaults
(shared per-source work, grouped ops), ``compiled`` adds torch.compile, ``cudagraphs`` compiles
with mode reduce-overhead (CUDA graphs; GPU only), ``checkpointed`` recomputes each cell in
backward (``checkpoint_cells``: less memory, more time). Peak memory is CUDA's allocator peak on
GPU, the process's peak RSS on CPU. Results go to stdout as a table and to ``--out`` as JSON.
Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from hyperdarts.modules.search import HyperDARTSSearch


@dataclass(frozen=True)
class BenchConfig:
    channels: int
    image_size: int
    init_channels: int
    num_cells: int
    batch_size: int


CONFIGS = {
    "digits": BenchConfig(1, 8, 8, 3, 64),  # configs/digits.yaml
    "small": BenchConfig(1, 28, 8, 3, 32),  # the small search the performance issue quotes
    "cifar": BenchConfig(3, 32, 16, 8, 64),  # configs/cifar.yaml, the paper's search
}
PASSES = {(1, "exact"): 2, (2, "exact"): 2, (2, "finite_difference"): 5}  # + the HVP primitive
FAST = {"share_source_ops": True, "group_ops": True}
MODES = {
    "eager": {"share_source_ops": False, "group_ops": False, "compile": False},
    "fast": {**FAST, "compile": False},
    "compiled": {**FAST, "compile": "default"},
    "cudagraphs": {**FAST, "compile": "reduce-overhead"},
    "checkpointed": {**FAST, "compile": False, "checkpoint_cells": True},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn, device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _median_seconds(fn, repeats: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_batch(
    cfg: BenchConfig, device: torch.device | str, batch_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels of ``cfg``'s shape (``batch_size`` instead of the config's)."""
    n = batch_size or cfg.batch_size
    x = torch.randn(n, cfg.channels, cfg.image_size, cfg.image_size, device=device)
    return x, torch.randint(0, 10, (n,), device=device)


def build_model(
    name: str, order: int, hessian: str, relaxation: str, mode: str, num_nodes: int = 4
) -> HyperDARTSSearch:
    """The search module of configuration ``name`` with mode ``mode``'s switches, seeded."""
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    return HyperDARTSSearch(
        num_channels=cfg.channels,
        image_size=cfg.image_size,
        num_classes=10,
        init_channels=cfg.init_channels,
        num_cells=cfg.num_cells,
        num_nodes=num_nodes,
        order=order,
        hessian=hessian,
        relaxation=relaxation,
        **MODES[mode],
    )


def bench(name: str, order: int, hessian: str, args: argparse.Namespace) -> dict:
    cfg, device = CONFIGS[name], torch.device(args.device)
    if args.batch_size:
        cfg = replace(cfg, batch_size=args.batch_size)
    model = build_model(name, order, hessian, args.relaxation, args.mode).to(device)
    hp = model.hparams
    opt_w = torch.optim.SGD(model.net.parameters(), hp.w_lr, hp.w_momentum, weight_decay=3e-4)
    opt_a = torch.optim.Adam(model.hypernet.parameters(), hp.arch_lr, betas=hp.arch_betas)
    batch = {"weight": make_batch(cfg, device), "arch": make_batch(cfg, device)}
    lam = 0.01

    params = dict(model.net.named_parameters())

    def weight_pass() -> None:
        with torch.no_grad():
            probs = model.probs(lam)
        x, y = batch["weight"]
        opt_w.zero_grad()
        F.cross_entropy(model.supernet()(params, x, probs), y).backward()

    def hvp_pass() -> None:
        """∇_α(∇_w L_train · v), bare: what the exact Hessian cannot do without."""
        probs = {k: v.detach().requires_grad_() for k, v in model.probs(lam).items()}
        x, y = batch["weight"]
        loss = F.cross_entropy(model.supernet(compiled=False)(params, x, probs), y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        v = [g.detach() for g in grads]
        torch.autograd.grad(grads, list(probs.values()), grad_outputs=v, allow_unused=True)

    def search_step() -> None:
        model.begin_step()
        surrogate, _, _ = model.architecture_objective(batch, lam, opt_w)
        opt_a.zero_grad()
        surrogate.backward()
        opt_a.step()
        weight_pass()
        torch.nn.utils.clip_grad_norm_(model.net.parameters(), hp.grad_clip)
        opt_w.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first_step = _seconds(search_step, device)
    unit = _median_seconds(weight_pass, args.repeats, args.warmup, device)
    exact = order == 2 and hessian == "exact"
    hvp = _median_seconds(hvp_pass, args.repeats, args.warmup, device) if exact else 0.0
    step = _median_seconds(search_step, args.repeats, args.warmup, device)
    passes = PASSES[(order, hessian)]
    irreducible = passes * unit + hvp
    return {
        "config": name,
        **asdict(cfg),
        "order": order,
        "hessian": hessian if order == 2 else None,
        "relaxation": args.relaxation,
        "mode": args.mode,
        **MODES[args.mode],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "weight_pass_ms": 1000 * unit,
        "hvp_pass_ms": 1000 * hvp if exact else None,
        "first_step_s": first_step,
        "step_ms": 1000 * step,
        "irreducible_passes": passes,
        "irreducible_ms": 1000 * irreducible,
        "ratio_to_irreducible": step / irreducible,
        "peak_memory_mb": _peak_memory_mb(device),
    }


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["digits", "small"], choices=CONFIGS)
    parser.add_argument("--orders", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument("--hessian", default="exact", choices=["exact", "finite_difference"])
    parser.add_argument(
        "--relaxation", default="softmax", choices=["softmax", "gumbel", "sigmoid", "dirichlet"]
    )
    parser.add_argument("--mode", default="fast", choices=list(MODES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, help="instead of the config's")
    parser.add_argument("--out", default="benchmarks/search_step.json")
    args = parser.parse_args()

    rows = [bench(c, o, args.hessian, args) for c in args.configs for o in args.orders]
    header = (
        f"{'config':<8}{'mode':>11}{'order':>6}{'weight pass ms':>16}{'hvp ms':>8}"
        f"{'step ms':>10}{'ratio':>7}{'1st step s':>11}{'peak MB':>9}"
    )
    print(header)
    for r in rows:
        hvp = "-" if r["hvp_pass_ms"] is None else f"{r['hvp_pass_ms']:.1f}"
        print(
            f"{r['config']:<8}{r['mode']:>11}{r['order']:>6}{r['weight_pass_ms']:>16.1f}{hvp:>8}"
            f"{r['step_ms']:>10.1f}{r['ratio_to_irreducible']:>7.2f}{r['first_step_s']:>11.1f}"
            f"{r['peak_memory_mb']:>9.0f}"
        )
    meta = {"torch": torch.__version__, "machine": platform.machine(), "cpu_count": os.cpu_count()}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
