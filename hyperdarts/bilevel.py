"""Architecture gradients of the bilevel objective, first and second order.

The supernet is used as a pure function ``loss_fn(params, alpha, batch)`` (torch.func's
functional_call), so the unrolled step needs no deep copy of the network.

Second order (DARTS, unrolled): w' = w − ξ·(momentum·buf + ∇_w L_train(w, α) + wd·w), exactly the
step SGD would take, and

    g_α = ∇_α L_val(w', α) − ξ · ∇²_{α,w} L_train(w, α) · ∇_{w'} L_val(w', α).

The mixed second derivative times a vector is computed exactly by double backward (default), or by
the central finite difference of DARTS with the correct 1/(2ε) factor, ε = fd_epsilon / ‖v‖.
The finite difference is inaccurate across ReLU kinks (see METHOD.md), hence not the default.
Double backward needs a loss whose graph can be differentiated twice, which torch.compile's graphs
cannot (AOT autograd): a compiled caller passes an eager ``train_loss_fn`` for that one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params, Params, Any], torch.Tensor]
HessianKind = Literal["exact", "finite_difference"]


@dataclass(frozen=True)
class VirtualStep:
    """The weight optimizer's step as the unrolled step must imitate it."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0


def _grad(out: torch.Tensor, inputs: Params, **kwargs: Any) -> Params:
    grads = torch.autograd.grad(out, list(inputs.values()), allow_unused=True, **kwargs)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(inputs.items(), grads)}


def _leaves(tensors: Params) -> Params:
    return {k: v.detach().requires_grad_(True) for k, v in tensors.items()}


def first_order(
    loss_fn: LossFn, params: Params, alpha: Params, val_batch: Any
) -> tuple[Params, torch.Tensor]:
    """∇_α L_val(w, α), ignoring how w* depends on α.

    w are constants of this pass, so autograd saves nothing for their gradients (18 % less memory
    on the CIFAR supernet). Leaf weights are frozen in place rather than detached, so that the
    loss can recognise its network's own parameters and call it without swapping them in."""
    alpha = _leaves(alpha)
    if not all(w.is_leaf for w in params.values()):
        params = {k: w.detach() for k, w in params.items()}
    with _constants(params.values()):
        loss = loss_fn(params, alpha, val_batch)
    return _grad(loss, alpha), loss.detach()


@contextmanager
def _constants(leaves: Iterable[torch.Tensor]) -> Iterator[None]:
    frozen = [w for w in leaves if w.requires_grad]
    for w in frozen:
        w.requires_grad_(False)
    try:
        yield
    finally:
        for w in frozen:
            w.requires_grad_(True)


def second_order(
    loss_fn: LossFn,
    params: Params,
    alpha: Params,
    train_batch: Any,
    val_batch: Any,
    step: VirtualStep,
    momentum_buffers: Params | None = None,
    hessian: HessianKind = "exact",
    fd_epsilon: float = 0.01,
    train_loss_fn: LossFn | None = None,
) -> tuple[Params, torch.Tensor]:
    """The unrolled architecture gradient g_α and the validation loss at w'. ``train_loss_fn``
    (default ``loss_fn``) computes the training loss at w, the pass the exact Hessian
    differentiates twice."""
    alpha = _leaves(alpha)
    weights = params if all(w.requires_grad for w in params.values()) else _leaves(params)
    exact = hessian == "exact"
    train_loss = (train_loss_fn or loss_fn)(weights, alpha, train_batch)
    train_grad = _grad(train_loss, weights, create_graph=exact)

    buffers = momentum_buffers or {}
    with torch.no_grad():
        unrolled = {}
        for k, w in weights.items():
            direction = train_grad[k].detach() + step.weight_decay * w
            if k in buffers:
                direction = direction + step.momentum * buffers[k]
            unrolled[k] = w - step.lr * direction
    unrolled = _leaves(unrolled)
    val_loss = loss_fn(unrolled, alpha, val_batch)
    grads = _grad(val_loss, {**alpha, **{f"w:{k}": v for k, v in unrolled.items()}})
    d_alpha = {k: grads[k] for k in alpha}
    v = {k: grads[f"w:{k}"] for k in unrolled}

    if exact:
        hvp = _mixed_hvp_exact(train_grad, alpha, v)
    else:
        hvp = _mixed_hvp_finite_difference(loss_fn, weights, alpha, train_batch, v, fd_epsilon)
    return {k: d_alpha[k] - step.lr * hvp[k] for k in alpha}, val_loss.detach()


def _mixed_hvp_exact(train_grad: Params, alpha: Params, v: Params) -> Params:
    """∇_α (∇_w L_train · v) by double backward through the retained graph of ∇_w L_train."""
    keys = [k for k, g in train_grad.items() if g.requires_grad]
    grads = torch.autograd.grad(
        [train_grad[k] for k in keys],
        list(alpha.values()),
        grad_outputs=[v[k] for k in keys],
        allow_unused=True,
    )
    return {k: torch.zeros_like(a) if g is None else g for (k, a), g in zip(alpha.items(), grads)}


def _mixed_hvp_finite_difference(
    loss_fn: LossFn, weights: Params, alpha: Params, train_batch: Any, v: Params, fd_epsilon: float
) -> Params:
    """[∇_α L_train(w + εv) − ∇_α L_train(w − εv)] / (2ε), ε = fd_epsilon / ‖v‖."""
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v.values()))
    if norm == 0:
        return {k: torch.zeros_like(a) for k, a in alpha.items()}
    eps = fd_epsilon / norm.item()
    with torch.no_grad():
        plus = {k: w + eps * v[k] for k, w in weights.items()}
        minus = {k: w - eps * v[k] for k, w in weights.items()}
    # A difference of two nearly equal gradients over 2ε: in bf16 (autocast) it would be mostly
    # rounding error, so these two passes always run in the weights' own precision.
    with torch.autocast(next(iter(weights.values())).device.type, enabled=False):
        g_plus = _grad(loss_fn(plus, alpha, train_batch), alpha)
        g_minus = _grad(loss_fn(minus, alpha, train_batch), alpha)
    return {k: (g_plus[k] - g_minus[k]) / (2 * eps) for k in alpha}
