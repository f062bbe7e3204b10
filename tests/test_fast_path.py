"""The supernet's fast paths (shared per-source ops, grouped ops) change the cost, not the result.

Every comparison runs the same seeded network with the flags off (the plain per-edge loop) and
on, in float64 so the tolerance can be tight: logits, loss, gradients w.r.t. every parameter and
w.r.t. the mixing weights, second-order gradients, the evaluation mask and the state dict.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import search_steps
from torch import nn

from hyperdarts.complexity import edge_input_sizes
from hyperdarts.errors import ConfigError
from hyperdarts.search_space.networks import SuperNet
from hyperdarts.search_space.ops import PRIMITIVES

CELL_TYPES = ("normal", "reduce")
PLAIN = {"share_source_ops": False, "group_ops": False}
FAST = {
    "shared": {"share_source_ops": True, "group_ops": False},
    "grouped": {"share_source_ops": True, "group_ops": True},
}
TOL = {"rtol": 1e-10, "atol": 1e-12}


def make_net(flags: dict[str, bool], image_size: int, **kwargs: int) -> SuperNet:
    """The same parameters whatever the flags: the flags add no parameters or buffers."""
    torch.manual_seed(0)
    space = {"init_channels": 4, "num_cells": 3, "num_nodes": 4} | kwargs
    return SuperNet(1, 5, image_size, **space, **flags).double()


def mixing_weights(
    edges: int, batch: int | None, seed: int = 1, requires_grad: bool = True
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (edges, len(PRIMITIVES)) if batch is None else (batch, edges, len(PRIMITIVES))
    return {
        ct: torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), -1)
        .detach()
        .requires_grad_(requires_grad)
        for ct in CELL_TYPES
    }


def run(net: SuperNet, x: torch.Tensor, y: torch.Tensor, weights: dict[str, torch.Tensor]):
    """Logits, loss, parameter gradients (by name) and mixing-weight gradients."""
    net.zero_grad(set_to_none=True)
    logits = net(x, weights)
    loss = F.cross_entropy(logits, y)
    params = dict(net.named_parameters())
    grads = torch.autograd.grad(loss, [*params.values(), *weights.values()])
    named = dict(zip(params, grads[: len(params)]))
    return logits, loss, named, dict(zip(weights, grads[len(params) :]))


@pytest.mark.parametrize("fast", sorted(FAST))
@pytest.mark.parametrize("image_size", [14, 28, 7])
@pytest.mark.parametrize("batch_weights", [False, True])
def test_fast_path_matches_plain_path(fast: str, image_size: int, batch_weights: bool) -> None:
    """Sizes 14 and 7 give odd sizes after the stride-2 reductions (7 → 4 → 2, 14 → 7 → 4)."""
    batch = 4
    plain, quick = make_net(PLAIN, image_size), make_net(FAST[fast], image_size)
    torch.manual_seed(2)
    x = torch.randn(batch, 1, image_size, image_size, dtype=torch.float64)
    y = torch.randint(0, 5, (batch,))
    w = mixing_weights(14, batch if batch_weights else None)
    logits_p, loss_p, grads_p, wgrads_p = run(plain, x, y, w)
    logits_f, loss_f, grads_f, wgrads_f = run(quick, x, y, w)
    torch.testing.assert_close(logits_f, logits_p, **TOL)
    torch.testing.assert_close(loss_f, loss_p, **TOL)
    assert grads_f.keys() == grads_p.keys()
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], **TOL, msg=name)
    for ct in CELL_TYPES:
        assert wgrads_p[ct].abs().sum() > 0
        torch.testing.assert_close(wgrads_f[ct], wgrads_p[ct], **TOL, msg=ct)


@pytest.mark.parametrize("fast", sorted(FAST))
def test_state_dict_is_unchanged(fast: str) -> None:
    """Checkpoints load both ways: the flags add, remove and reshape nothing."""
    plain, quick = make_net(PLAIN, 14), make_net(FAST[fast], 14)
    sd_p, sd_f = plain.state_dict(), quick.state_dict()
    assert list(sd_p) == list(sd_f)
    assert all(sd_p[k].shape == sd_f[k].shape for k in sd_p)
    quick.load_state_dict(sd_p, strict=True)
    plain.load_state_dict(sd_f, strict=True)


def second_order_outputs(flags: dict[str, bool], batch_weights: bool) -> list[torch.Tensor]:
    """Logits, the gradients w.r.t. parameters and mixing weights, and the mixing weights'
    gradient of (∇_w L · d) for a fixed random direction d, as in a Hessian-vector product."""
    net = make_net(flags, 7, init_channels=2, num_nodes=2)
    torch.manual_seed(3)
    x = torch.randn(3, 1, 7, 7, dtype=torch.float64)
    y = torch.randint(0, 5, (3,))
    w = mixing_weights(5, 3 if batch_weights else None)
    params = list(net.parameters())
    logits = net(x, w)
    grads = torch.autograd.grad(
        F.cross_entropy(logits, y), params + list(w.values()), create_graph=True
    )
    g = torch.Generator().manual_seed(4)
    dirs = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    inner = sum((gr * d).sum() for gr, d in zip(grads, dirs))
    return [logits, *grads, *torch.autograd.grad(inner, list(w.values()))]


def assert_same_outputs(reference: list[torch.Tensor], other: list[torch.Tensor]) -> None:
    assert len(reference) == len(other) and reference[-1].abs().sum() > 0
    for r, o in zip(reference, other):
        torch.testing.assert_close(o, r, **TOL)


@pytest.mark.parametrize("fast", sorted(FAST))
@pytest.mark.parametrize("batch_weights", [False, True])
def test_second_order_gradients_match(fast: str, batch_weights: bool) -> None:
    """The unrolled step differentiates the weight gradient w.r.t. the mixing weights."""
    plain = second_order_outputs(PLAIN, batch_weights)
    assert_same_outputs(plain, second_order_outputs(FAST[fast], batch_weights))


@pytest.mark.parametrize("batch_weights", [False, True])
def test_checkpointed_cells_give_the_same_values_and_gradients(batch_weights: bool) -> None:
    """Recomputing cells in backward changes memory, not results: logits, gradients w.r.t.
    parameters and mixing weights, and the double backward of the exact Hessian."""
    plain = second_order_outputs(FAST["grouped"], batch_weights)
    flags = {**FAST["grouped"], "checkpoint_cells": True}
    assert_same_outputs(plain, second_order_outputs(flags, batch_weights))


def test_checkpointed_cells_recompute_with_the_parameters_they_ran_with() -> None:
    """The unrolled step runs the supernet on w' through functional_call, which restores w before
    backward recomputes the cells: the recomputation must still use w'."""
    from torch.func import functional_call

    results = []
    for flags in (FAST["grouped"], {**FAST["grouped"], "checkpoint_cells": True}):
        net = make_net(flags, 7, init_channels=2, num_nodes=2)
        torch.manual_seed(3)
        x = torch.randn(3, 1, 7, 7, dtype=torch.float64)
        y = torch.randint(0, 5, (3,))
        w = mixing_weights(5, None)
        unrolled = {k: (1.5 * v).detach().requires_grad_() for k, v in net.named_parameters()}
        loss = F.cross_entropy(functional_call(net, unrolled, (x, w)), y)
        results.append(torch.autograd.grad(loss, [*unrolled.values(), *w.values()]))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, **TOL)


@pytest.mark.parametrize("fast", sorted(FAST))
def test_evaluation_mask_still_skips_zero_weight_ops(fast: str) -> None:
    """One-hot weights without autograd: the same output as the plain path with autograd, and
    most convolutions are not run (including the grouped ones of inactive edges)."""
    plain, quick = make_net(PLAIN, 8), make_net(FAST[fast], 8)
    torch.manual_seed(5)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    weights = {}
    for ct in CELL_TYPES:
        w = torch.zeros(14, len(PRIMITIVES), dtype=torch.float64)
        w[torch.arange(14), torch.randint(1, len(PRIMITIVES), (14,))] = 1.0
        w[3] = 0.0  # an edge with no active op
        weights[ct] = w
    with torch.enable_grad():
        full = plain(x, weights)
    n_convs = sum(isinstance(m, nn.Conv2d) for m in quick.modules())
    # nn.Conv2d and the grouped ops both call F.conv2d: count the calls there.
    calls: list[int] = []
    real_conv2d = F.conv2d

    def counting_conv2d(*args, **kwargs):
        calls.append(1)
        return real_conv2d(*args, **kwargs)

    try:
        F.conv2d = counting_conv2d
        with torch.no_grad():
            skipped = quick(x, weights)
    finally:
        F.conv2d = real_conv2d
    torch.testing.assert_close(skipped, full, rtol=0, atol=1e-12)
    assert 0 < len(calls) < n_convs / 2


def test_parameter_free_ops_run_once_per_source() -> None:
    """4 nodes: 6 sources, the last one (node 5) feeds no edge, so pools run 5 times per cell,
    not 14."""
    counts = {}
    for name, flags in [("plain", PLAIN), ("shared", FAST["shared"])]:
        net = make_net(flags, 8)
        pools = [m for m in net.modules() if isinstance(m, nn.MaxPool2d)]
        calls: list[int] = []
        hooks = [m.register_forward_hook(lambda *a, c=calls: c.append(1)) for m in pools]
        net(torch.randn(2, 1, 8, 8, dtype=torch.float64), mixing_weights(14, None))
        for h in hooks:
            h.remove()
        counts[name] = len(calls)
    assert counts == {"plain": 3 * 14, "shared": 3 * 5}


def test_edge_hooks_still_see_every_edge() -> None:
    """complexity.edge_input_sizes hooks MixedOp.forward; the fast path still calls it."""
    sizes = {}
    for name, flags in [("plain", PLAIN), *FAST.items()]:
        sizes[name] = edge_input_sizes(make_net(flags, 14).float(), 14)
    assert sizes["shared"] == sizes["plain"] == sizes["grouped"]


def test_group_ops_needs_shared_source_ops() -> None:
    with pytest.raises(ConfigError, match="group_ops"):
        SuperNet(1, 5, 8, 4, 3, 4, share_source_ops=False, group_ops=True)


def test_fast_path_is_the_default() -> None:
    net = SuperNet(1, 5, 8, 4, 3, 4)
    assert all(cell.share_source_ops and cell.group_ops for cell in net.cells)


# --- through the search module: the whole search step --------------------------------------------


def search_module(flags: dict[str, bool], **kwargs):
    from hyperdarts.modules.search import HyperDARTSSearch

    torch.manual_seed(0)
    settings = dict(
        num_channels=1, image_size=8, num_classes=5, init_channels=4, num_cells=3,
        lambda_min=1e-3, lambda_max=1.0, order=2, relaxation="gumbel", seed=3,
    )  # fmt: skip
    module = HyperDARTSSearch(**(settings | flags | kwargs)).double()
    with torch.no_grad():
        for p in module.hypernet.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return module


def test_search_steps_match_plain_path() -> None:
    """Second order, Gumbel noise, momentum: same architecture gradients step after step and the
    same derived genotypes on a fixed seed, fast path against the plain per-edge loop."""
    plain, fast = (search_steps(search_module(flags)) for flags in (PLAIN, FAST["grouped"]))
    assert_same_steps(plain, fast)


@pytest.mark.parametrize("order, hessian", [(1, "exact"), (2, "exact"), (2, "finite_difference")])
def test_checkpointed_search_steps_match(order: int, hessian: str) -> None:
    """Recomputed cells through whole search steps: first order (w frozen for its pass), the
    unrolled step (w' and w ± εv swapped in), the exact Hessian's double backward."""
    flags = {"order": order, "hessian": hessian, "num_nodes": 2}
    plain = search_steps(search_module(FAST["grouped"], **flags), 2)
    checkpointed = search_steps(search_module(FAST["grouped"], checkpoint_cells=True, **flags), 2)
    assert_same_steps(plain, checkpointed)


def assert_same_steps(reference: dict, other: dict) -> None:
    for r, o in zip(reference["arch_grads"], other["arch_grads"]):
        assert float(r.norm()) > 1e-6
        torch.testing.assert_close(o, r, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(other["weight_losses"], reference["weight_losses"])
    assert other["genotypes"] == reference["genotypes"]


def test_channels_last_matches_default_layout() -> None:
    """NHWC storage changes the layout, not the values: same logits and gradients, same keys."""
    x = torch.randn(3, 1, 14, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 3, 4])
    default = make_net(FAST["grouped"], 14)
    nhwc = make_net({**FAST["grouped"], "channels_last": True}, 14)
    assert nhwc.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert list(nhwc.state_dict()) == list(default.state_dict())
    weights = mixing_weights(14, None)
    ref_logits, ref_loss, ref_params, ref_mix = run(default, x, y, weights)
    logits, loss, params, mix = run(nhwc, x, y, weights)
    torch.testing.assert_close(logits, ref_logits, **TOL)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    for name in ref_params:
        torch.testing.assert_close(params[name], ref_params[name], **TOL)
    for ct in ref_mix:
        torch.testing.assert_close(mix[ct], ref_mix[ct], **TOL)
