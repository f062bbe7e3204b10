"""The supernet as one compiled function of (parameters, images, mixing weights).

A search step is thousands of tiny kernels; on a GPU the host spends longer launching them than
the GPU spends running them. ``torch.compile`` fuses the elementwise work (ReLU, BN, the weighted
sums of the mixed ops) into fewer kernels, and its ``reduce-overhead`` mode also replays the
forward and backward as CUDA graphs: one launch each.

What is compiled: every supernet forward (and, through AOT autograd, its backward) that the search
step differentiates once: the weight step, the validation pass, the finite-difference passes. What
stays eager: the training pass that the exact Hessian differentiates twice (compiled graphs cannot
be differentiated twice), evaluation (it skips zero-weight ops, a data-dependent choice), the
hypernetwork and the complexity term (a few small kernels). λ, the temperature and the noise reach
the supernet only through the mixing-weight tensors, which are graph inputs, so a new λ does not
recompile; a new batch size (the last, short batch) or a new pattern of which inputs need gradients
compiles once more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call

from hyperdarts.errors import ConfigError

CompileMode = bool | Literal["default", "reduce-overhead", "max-autotune"]
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune")
Tensors = dict[str, torch.Tensor]
SupernetFn = Callable[[Tensors, torch.Tensor, Tensors], torch.Tensor]


def compile_mode(compile: CompileMode) -> str | None:
    """torch.compile's mode for the ``compile`` setting; None: not compiled. true means
    default (YAML reads ``off`` as false)."""
    if compile is False:
        return None
    if compile is True:
        return "default"
    if compile not in COMPILE_MODES:
        raise ConfigError(
            f"compile={compile!r}: use false, true or default (fused kernels), reduce-overhead "
            "(fused kernels replayed as CUDA graphs) or max-autotune"
        )
    return compile


def validate_compile(compile: CompileMode, backend: str) -> None:
    compile_mode(compile)
    if not isinstance(backend, str) or not backend:
        raise ConfigError(
            f"compile_backend={backend!r}: a torch.compile backend name, e.g. inductor (the "
            "default) or aot_eager (traces without generating code, to debug)"
        )


def supernet_function(
    net: nn.Module, compile: CompileMode = False, backend: str = "inductor"
) -> SupernetFn:
    """``f(params, x, weights) = net(x, weights)`` with ``net``'s parameters replaced by
    ``params`` (torch.func.functional_call), compiled as ``compile`` says.

    The parameters are an argument so that the unrolled step can evaluate the supernet at w' with
    no copy of the network, compiled or not. Eager, ``net``'s own parameters are not swapped in:
    functional_call's swap costs ~20 µs per parameter, ~25 ms per pass for the CIFAR supernet's
    1,397. ``backend`` other than inductor ignores ``mode``.
    """
    validate_compile(compile, backend)
    mode = compile_mode(compile)
    own = list(net.named_parameters())

    def forward(params: Tensors, x: torch.Tensor, weights: Tensors) -> torch.Tensor:
        if len(params) == len(own) and all(params.get(k) is p for k, p in own):
            return net(x, weights)
        return functional_call(net, params, (x, weights))

    if mode is None:
        return forward
    if backend != "inductor":
        return torch.compile(forward, backend=backend)
    return torch.compile(forward, mode=None if mode == "default" else mode)
