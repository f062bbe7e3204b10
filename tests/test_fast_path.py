"""The supernet's fast paths (shared per-source ops, grouped ops) change the cost, not the result.

Every comparison runs the same seeded network with the flags off (the plain per-edge loop) and
on, in float64 so the tolerance can be tight: logits, loss, gradients w.r.t. every parameter and
w.r.t. the mixing weights, second-order gradients, the evaluation mask and the state dict.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
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


@pytest.mark.parametrize("fast", sorted(FAST))
@pytest.mark.parametrize("batch_weights", [False, True])
def test_second_order_gradients_match(fast: str, batch_weights: bool) -> None:
    """The unrolled step differentiates the weight gradient w.r.t. the mixing weights."""
    results = []
    for flags in (PLAIN, FAST[fast]):
        net = make_net(flags, 7, init_channels=2, num_nodes=2)
        torch.manual_seed(3)
        x = torch.randn(3, 1, 7, 7, dtype=torch.float64)
        y = torch.randint(0, 5, (3,))
        w = mixing_weights(5, 3 if batch_weights else None)
        params = list(net.parameters())
        loss = F.cross_entropy(net(x, w), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        # A fixed random direction, as in a Hessian-vector product.
        g = torch.Generator().manual_seed(4)
        dirs = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
        inner = sum((gr * d).sum() for gr, d in zip(grads, dirs))
        results.append(torch.autograd.grad(inner, list(w.values())))
    for ct, plain, quick in zip(CELL_TYPES, *results):
        assert plain.abs().sum() > 0
        torch.testing.assert_close(quick, plain, **TOL, msg=ct)


@pytest.mark.parametrize("batch_weights", [False, True])
def test_checkpointed_cells_give_the_same_values_and_gradients(batch_weights: bool) -> None:
    """Recomputing cells in backward changes memory, not results: logits, gradients w.r.t.
    parameters and mixing weights, and the double backward of the exact Hessian."""
    results = []
    for flags in (FAST["grouped"], {**FAST["grouped"], "checkpoint_cells": True}):
        net = make_net(flags, 7, init_channels=2, num_nodes=2)
        torch.manual_seed(3)
        x = torch.randn(3, 1, 7, 7, dtype=torch.float64)
        y = torch.randint(0, 5, (3,))
        w = mixing_weights(5, 3 if batch_weights else None)
        params = list(net.parameters())
        logits = net(x, w)
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, params + list(w.values()), create_graph=True)
        g = torch.Generator().manual_seed(4)
        dirs = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
        inner = sum((gr * d).sum() for gr, d in zip(grads, dirs))
        results.append([logits, *grads, *torch.autograd.grad(inner, list(w.values()))])
    plain, checkpointed = results
    assert len(plain) == len(checkpointed)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(b, a, **TOL)
    assert plain[-1].abs().sum() > 0


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


def search_steps(module, steps: int = 3):
    """A few full search steps (architecture step, then weight step) on fixed batches; the θ
    gradients of each architecture step, and the genotypes derived at the end."""
    g = torch.Generator().manual_seed(4)
    opt_w = torch.optim.SGD(module.net.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    opt_a = torch.optim.Adam(module.hypernet.parameters(), lr=0.05)
    grads = []
    for _ in range(steps):
        batch = {
            k: (torch.randn(8, 1, 8, 8, generator=g, dtype=torch.float64),
                torch.randint(0, 5, (8,), generator=g))
            for k in ("weight", "arch")
        }  # fmt: skip
        lam = module.sampler.sample(module.rng)
        opt_a.zero_grad()
        surrogate, _, _ = module.architecture_objective(batch, lam, opt_w)
        surrogate.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in module.hypernet.parameters()]))
        opt_a.step()
        opt_w.zero_grad()
        x, y = batch["weight"]
        with torch.no_grad():
            probs = module.relaxation.sample(module.alpha(lam), module.tau, module._noise(8))
        F.cross_entropy(module.net(x, probs), y).backward()
        opt_w.step()
    return grads, [module.genotype(lam) for lam in module.val_grid]


def test_search_steps_match_plain_path() -> None:
    """Second order, Gumbel noise, momentum: same architecture gradients step after step and the
    same derived genotypes on a fixed seed, fast path against the plain per-edge loop."""
    plain_grads, plain_genotypes = search_steps(search_module(PLAIN))
    fast_grads, fast_genotypes = search_steps(search_module(FAST["grouped"]))
    for p, f in zip(plain_grads, fast_grads):
        assert float(p.norm()) > 1e-6
        torch.testing.assert_close(f, p, rtol=1e-8, atol=1e-10)
    assert fast_genotypes == plain_genotypes


@pytest.mark.parametrize("order, hessian", [(1, "exact"), (2, "exact"), (2, "finite_difference")])
def test_checkpointed_search_steps_match(order: int, hessian: str) -> None:
    """Recomputed cells through whole search steps: first order (w frozen for its pass), the
    unrolled step (w' and w ± εv swapped in), the exact Hessian's double backward."""
    flags = {"order": order, "hessian": hessian, "num_nodes": 2}
    plain_grads, plain_genotypes = search_steps(search_module(FAST["grouped"], **flags), 2)
    grads, genotypes = search_steps(
        search_module(FAST["grouped"], checkpoint_cells=True, **flags), 2
    )
    for p, c in zip(plain_grads, grads):
        assert float(p.norm()) > 1e-6
        torch.testing.assert_close(c, p, rtol=1e-8, atol=1e-10)
    assert genotypes == plain_genotypes


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
