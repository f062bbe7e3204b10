"""Peak memory of one search step, estimated without computing it: ``python benchmarks/memory.py
--configs cifar --batch-sizes 64 256 --orders 1 2``.

What it measures: the peak of live tensor bytes during one full search step, the step that
``benchmarks/search_step.py`` times (architecture objective, its backward and the Adam step on the
hypernetwork; then the weight forward and backward, gradient clipping and the SGD step), in fp32,
eager (no torch.compile, no channels_last), taken in the steady state: after a warm-up step, so
that the weights' gradients, SGD's momentum and Adam's moments exist, as from a search's second
step on. The optimizers use foreach, the default on CUDA.

How: the step runs on data-free tensors, meta tensors (default) or ``FakeTensorMode``'s fake CPU
tensors (``--tensors fake``): both have shapes, dtypes and storages of the right size, and each op
runs only its shape function. A TorchDispatchMode sees every op's outputs and keeps the bytes of
each live storage; a weak reference says when a storage is freed. Parameters and buffers are
registered at the start; everything else (gradients, optimizer states, activations saved for
backward, the graph that the exact Hessian's double backward keeps, every temporary) is some op's
output, counted while it lives. Scalars the Python code reads (``.item()``: the finite-difference
step's ‖v‖) are answered 1.0; the memory does not depend on them.

Device: fake CUDA tensors can be made without a GPU, but autograd's engine needs a real device to
run backward on them, so the traced tensors are meta or CPU tensors. Tensor sizes are the same on
any device; ``peak_cuda_mib`` rounds each storage up to 512 bytes as CUDA's caching allocator
rounds each block: it estimates ``torch.cuda.max_memory_allocated``.

Not modelled, hence the ``budget`` column, the peak plus a stated margin (``--margin``, default
20%, and ``--overhead-mib``, default 1 GiB: assumptions, not measurements):
- the caching allocator's segments and fragmentation (reserved memory, what nvidia-smi shows,
  exceeds allocated memory);
- workspaces allocated inside ops, which no dispatch mode sees: cuDNN convolution workspaces, the
  cuBLAS workspace (on CPU: oneDNN's scratch buffers);
- the CUDA context and kernels (several hundred MiB outside PyTorch's allocator);
- CUDA-specific kernel choices (e.g. cuDNN batch norm's reserve buffer).

``--validate`` also runs each case on real CPU tensors (use it at small configurations): measured
by the same tracker (same code, same frees: it must agree exactly), and independently by
torch.profiler's allocator events, which count every CPU allocation, including the temporaries
inside ops that the tracker cannot see.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from search_step import CONFIGS, build_model, make_batch
from torch._C._autograd import DeviceType
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._python_dispatch import TorchDispatchMode

MIB = 2**20
CUDA_BLOCK = 512  # the CUDA caching allocator rounds every block up to a multiple of 512 bytes
GPU_MIB = 24 * 1024  # the performance issue's 24 GB card
LAMBDA = 0.01  # the λ of benchmarks/search_step.py
MEASURED = "measured search step"
_LOCAL_SCALAR = torch.ops.aten._local_scalar_dense.default  # what .item() runs
NOT_MODELLED = [
    "CUDA caching allocator segments and fragmentation (reserved > allocated)",
    "workspaces allocated inside ops (cuDNN convolution, cuBLAS; oneDNN scratch on CPU)",
    "CUDA context and kernels (outside PyTorch's allocator)",
    "device-specific kernel choices (e.g. cuDNN batch norm's reserve buffer)",
]
EAGER_MODES = ["eager", "fast", "checkpointed"]  # search_step.py's modes without torch.compile


@dataclass(frozen=True)
class Case:
    config: str
    batch_size: int
    order: int
    hessian: str
    mode: str = "fast"
    relaxation: str = "softmax"
    num_nodes: int = 4


class LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storages, raw and rounded to CUDA blocks, with their peaks.

    A storage is counted from the first op that outputs it (or from ``register``) until it is
    freed. ``stub_scalars``: answer ``.item()`` with 1.0 (for tensors without data).
    """

    def __init__(self, stub_scalars: bool = False) -> None:
        super().__init__()
        self.stub_scalars = stub_scalars
        self.sizes: dict[int, tuple[int, int]] = {}  # id(storage) -> (bytes, CUDA bytes)
        self._refs: dict[int, weakref.ref] = {}
        self.bytes = self.cuda_bytes = 0
        self.peak_bytes = self.peak_cuda_bytes = 0
        self.phase = "start"
        self.phase_peaks: dict[str, int] = {}  # CUDA bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if self.stub_scalars and func is _LOCAL_SCALAR:
            return _one(args[0].dtype)
        out = func(*args, **(kwargs or {}))
        self._add_outputs(out)
        self._update_peaks()
        return out

    def register(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            self._add(t.untyped_storage())
        self._update_peaks()

    def _add_outputs(self, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            self._add(out.untyped_storage())
        elif isinstance(out, (tuple, list)):
            for o in out:
                self._add_outputs(o)

    def _add(self, storage: torch.UntypedStorage) -> None:
        key, nbytes = id(storage), storage.nbytes()
        known = self.sizes.get(key)
        if known is not None:
            if known[0] == nbytes:
                return
            self._free(key)  # resized in place: count the new size
        cuda = -(-nbytes // CUDA_BLOCK) * CUDA_BLOCK
        self.sizes[key] = (nbytes, cuda)
        self._refs[key] = weakref.ref(storage, lambda _, key=key: self._free(key))
        self.bytes += nbytes
        self.cuda_bytes += cuda

    def _free(self, key: int) -> None:
        self._refs.pop(key, None)
        sizes = self.sizes.pop(key, None)
        if sizes is not None:
            self.bytes -= sizes[0]
            self.cuda_bytes -= sizes[1]

    def _update_peaks(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        if self.cuda_bytes > self.phase_peaks.get(self.phase, -1):
            self.phase_peaks[self.phase] = self.cuda_bytes
            self.peak_cuda_bytes = max(self.peak_cuda_bytes, self.cuda_bytes)

    def reset_peaks(self) -> None:
        self.peak_bytes, self.peak_cuda_bytes = self.bytes, self.cuda_bytes
        self.phase_peaks = {}

    @contextlib.contextmanager
    def in_phase(self, name: str) -> Iterator[None]:
        self.phase = name
        self._update_peaks()
        yield
        self.phase = "between"

    def bytes_of(self, tensors: Iterable[torch.Tensor]) -> int:
        """CUDA bytes of the live storages among ``tensors``, each storage counted once."""
        keys = {id(t.untyped_storage()) for t in tensors}
        return sum(self.sizes[k][1] for k in keys if k in self.sizes)


def _one(dtype: torch.dtype) -> bool | int | float:
    if dtype == torch.bool:
        return True
    return 1.0 if dtype.is_floating_point else 1


def fake_model(model: torch.nn.Module, fake_mode: FakeTensorMode) -> None:
    """Swap every parameter and buffer for a fake tensor of the same size (no data kept)."""
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                fake = fake_mode.from_tensor(p.detach())
                module._parameters[name] = torch.nn.Parameter(fake, p.requires_grad)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = fake_mode.from_tensor(b)


class Session:
    """A model and its optimizers in the steady state of a search, on meta, fake or real tensors.

    The state between steps (gradients, SGD's momentum, Adam's moments and step count) has the
    same tensors whatever the order, Hessian and batch size, so one warm-up step (first order,
    batch 2) serves every case of a configuration; each measured step leaves that state as it was.
    """

    def __init__(self, case: Case, tensors: str) -> None:
        """For ``case``'s configuration, mode, relaxation and nodes; ``tensors``: fake (CPU),
        meta or real (CPU)."""
        warmup = replace(case, batch_size=2, order=1, hessian="exact")
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if tensors == "fake" else None
        self.device = "meta" if tensors == "meta" else "cpu"
        self.model = build_model(
            warmup.config, warmup.order, warmup.hessian, warmup.relaxation, warmup.mode,
            warmup.num_nodes,
        ).to(self.device)  # fmt: skip
        if self.fake_mode is not None:
            fake_model(self.model, self.fake_mode)
        self.tracker = LiveBytes(stub_scalars=tensors != "real")
        hp = self.model.hparams
        # foreach: the default on CUDA (not on CPU); it keeps a step's temporaries alive together.
        with self._mode():
            self.opt_w = torch.optim.SGD(
                self.model.net.parameters(), hp.w_lr, hp.w_momentum, weight_decay=3e-4, foreach=True
            )
            self.opt_a = torch.optim.Adam(
                self.model.hypernet.parameters(), hp.arch_lr, betas=hp.arch_betas, foreach=True
            )
        self.tracker.register(self.model.parameters())
        self.tracker.register(self.model.buffers())
        self._new_batches(warmup)
        self._run(warmup)

    def _mode(self) -> contextlib.AbstractContextManager:
        return self.fake_mode or contextlib.nullcontext()

    def measure(self, case: Case, profiled: bool = False) -> dict[str, Any]:
        """Peak bytes of one search step of ``case`` from the steady state. ``profiled``: also
        the rise of allocated bytes that torch.profiler sees (real tensors only)."""
        start = time.perf_counter()
        profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with profiler if profiled else contextlib.nullcontext():
            self._new_batches(case)
            if profiled:  # the profiler misses frees of blocks allocated before it started
                self._run(case)
            self.tracker.reset_peaks()
            live = (self.tracker.bytes, self.tracker.cuda_bytes)
            with record_function(MEASURED):
                self._run(case)
        tracker = self.tracker
        row = {
            "persistent_mib": {
                k: tracker.bytes_of(ts) / MIB for k, ts in self.persistent().items()
            },
            "live_at_start_mib": live[1] / MIB,
            "peak_mib": tracker.peak_bytes / MIB,
            "peak_cuda_mib": tracker.peak_cuda_bytes / MIB,
            "phase_peaks_cuda_mib": {k: v / MIB for k, v in tracker.phase_peaks.items()},
            "seconds": time.perf_counter() - start,
        }
        if profiled:
            row["profiler_rise_mib"] = _allocator_rise(profiler) / MIB
            row["tracker_rise_mib"] = (tracker.peak_bytes - live[0]) / MIB
        return row

    def _new_batches(self, case: Case) -> None:
        self.batch = {}  # the last step's batches go first
        with self._mode(), self.tracker:
            self.batch = {
                part: make_batch(CONFIGS[case.config], self.device, case.batch_size)
                for part in ("weight", "arch")
            }

    def _run(self, case: Case) -> None:
        """One search step as benchmarks/search_step.py's ``search_step`` takes it."""
        model, hp, tracker = self.model, self.model.hparams, self.tracker
        hp.order, hp.hessian = case.order, case.hessian  # read by architecture_objective only
        with self._mode(), tracker:
            with tracker.in_phase("architecture"):
                surrogate, _, _ = model.architecture_objective(self.batch, LAMBDA, self.opt_w)
                self.opt_a.zero_grad()
                surrogate.backward()
                self.opt_a.step()
                del surrogate
            with tracker.in_phase("weight"):
                with torch.no_grad():
                    probs = model.probs(LAMBDA)
                x, y = self.batch["weight"]
                self.opt_w.zero_grad()
                F.cross_entropy(model.net(x, probs), y).backward()
                torch.nn.utils.clip_grad_norm_(model.net.parameters(), hp.grad_clip)
                self.opt_w.step()

    def persistent(self) -> dict[str, list[torch.Tensor]]:
        """What lives between steps, by kind."""
        params = list(self.model.parameters())
        return {
            "parameters": params,
            "gradients": [p.grad for p in params if p.grad is not None],
            "optimizer_state": _state_tensors(self.opt_w) + _state_tensors(self.opt_a),
            "buffers": list(self.model.buffers()),
            "batches": [t for b in self.batch.values() for t in b],
        }


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    states = optimizer.state.values()
    return [v for state in states for v in state.values() if isinstance(v, torch.Tensor)]


def _allocator_rise(prof: profile) -> int:
    """Largest rise of allocated CPU bytes during the measured step above its start."""
    events = list(prof.profiler.kineto_results.events())
    step = next(e for e in events if e.name() == MEASURED)
    memory = [
        e
        for e in events
        if e.name() == "[memory]"
        and e.device_type() == DeviceType.CPU
        and step.start_ns() <= e.start_ns() <= step.end_ns()
    ]
    level = rise = 0
    for e in sorted(memory, key=lambda e: e.start_ns()):
        level += e.nbytes()
        rise = max(rise, level)
    return rise


def estimate(cases: list[Case], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows for ``cases`` (one configuration, mode, relaxation and number of nodes); real CPU
    tensors as well with ``--validate``."""
    sessions = {"estimate": Session(cases[0], args.tensors)}
    if args.validate:
        sessions["real"] = Session(cases[0], "real")
    rows = []
    for case in cases:
        row = {**asdict(CONFIGS[case.config]), **asdict(case)}
        row["hessian"] = case.hessian if case.order == 2 else None
        row.update(sessions["estimate"].measure(case))
        row["budget_mib"] = row["peak_cuda_mib"] * (1 + args.margin) + args.overhead_mib
        row["gpu_mib"] = args.gpu_mib
        row["fits"] = row["budget_mib"] <= args.gpu_mib
        if args.validate:
            real = sessions["real"].measure(case, profiled=True)
            row["real_peak_mib"] = real["peak_mib"]
            row["estimate_over_real"] = row["peak_mib"] / real["peak_mib"]
            row["real_tracker_rise_mib"] = real["tracker_rise_mib"]
            row["real_profiler_rise_mib"] = real["profiler_rise_mib"]
            row["real_seconds"] = real["seconds"]
        rows.append(row)
    return rows


def cases(args: argparse.Namespace) -> list[list[Case]]:
    """The cases to measure, grouped by configuration (one warm-up each)."""
    groups = []
    for name in args.configs:
        group = []
        for batch_size in args.batch_sizes or [CONFIGS[name].batch_size]:
            for order in args.orders:
                for hessian in args.hessian if order == 2 else ["exact"]:
                    case = Case(name, batch_size, order, hessian, args.mode, args.relaxation)
                    group.append(replace(case, num_nodes=args.num_nodes))
        groups.append(group)
    return groups


def print_table(rows: list[dict[str, Any]]) -> None:
    gib = rows[0]["gpu_mib"] / 1024 if rows else 0
    print(
        f"{'config':<8}{'batch':>6}{'order':>6}{'hessian':>18}{'persistent':>11}{'peak MiB':>10}"
        f"{'in phase':>13}{'budget MiB':>11}{'peak/budget of ' + f'{gib:g} GiB':>24}"
    )
    for r in rows:
        phase = max(r["phase_peaks_cuda_mib"], key=r["phase_peaks_cuda_mib"].get)
        shares = f"{r['peak_cuda_mib'] / r['gpu_mib']:.0%} / {r['budget_mib'] / r['gpu_mib']:.0%}"
        print(
            f"{r['config']:<8}{r['batch_size']:>6}{r['order']:>6}{r['hessian'] or '-':>18}"
            f"{r['live_at_start_mib']:>11.0f}{r['peak_cuda_mib']:>10.0f}{phase:>13}"
            f"{r['budget_mib']:>11.0f}{shares:>24}"
        )
    if rows and "real_peak_mib" in rows[0]:
        print("\nvalidation on real CPU tensors (MiB, no rounding); rise: peak above step start")
        print(f"{'config':<8}{'batch':>6}{'order':>6}{'hessian':>18}{'estimate':>10}"
              f"{'real':>10}{'ratio':>8}{'rise: tracker':>15}{'profiler':>10}")  # fmt: skip
        for r in rows:
            print(
                f"{r['config']:<8}{r['batch_size']:>6}{r['order']:>6}{r['hessian'] or '-':>18}"
                f"{r['peak_mib']:>10.2f}{r['real_peak_mib']:>10.2f}{r['estimate_over_real']:>8.3f}"
                f"{r['real_tracker_rise_mib']:>15.2f}{r['real_profiler_rise_mib']:>10.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["cifar"], choices=CONFIGS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="default: the config's")
    parser.add_argument("--orders", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument(
        "--hessian", nargs="+", default=["exact"], choices=["exact", "finite_difference"]
    )
    parser.add_argument("--relaxation", default="softmax", choices=["softmax", "gumbel", "sigmoid"])
    parser.add_argument("--mode", default="fast", choices=EAGER_MODES)
    parser.add_argument(
        "--tensors", default="meta", choices=["meta", "fake"], help="data-free tensors to trace"
    )
    parser.add_argument("--num-nodes", type=int, default=4, help="nodes per cell (DARTS: 4)")
    parser.add_argument(
        "--margin", type=float, default=0.2, help="budget: fraction added for what is not modelled"
    )
    parser.add_argument(
        "--overhead-mib", type=float, default=1024, help="budget: CUDA context and workspaces"
    )
    parser.add_argument("--gpu-mib", type=float, default=GPU_MIB)
    parser.add_argument(
        "--validate", action="store_true", help="also run on real CPU tensors (small configs)"
    )
    parser.add_argument("--out", default="benchmarks/memory.json")
    args = parser.parse_args()

    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = [row for group in cases(args) for row in estimate(group, args)]
    print_table(rows)
    meta = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "tensors": args.tensors,
        "peak_cuda_mib": "each storage rounded up to 512 bytes, as CUDA's caching allocator does",
        "budget_mib": "peak_cuda_mib * (1 + margin) + overhead_mib",
        "not_modelled": NOT_MODELLED,
        "margin": args.margin,
        "overhead_mib": args.overhead_mib,
        "seconds": time.perf_counter() - start,
    }
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
