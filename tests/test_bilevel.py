"""Architecture gradients, first and second order, against independent autograd references.

Every reference here is built from scratch: the unrolled weight step w' = w − ξ(∇_w L_train +
wd·w + momentum·buf) is written out with ``create_graph=True`` and ∇_α of L_val(w'(α), α) is taken
by plain autograd through it. Nothing in a reference calls ``hyperdarts.bilevel``. The supernet
forward in the references is our own ``functional_call`` + softmax + cross entropy, so the
module's ``_loss``/``relax`` are also checked, not trusted.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from hyperdarts.bilevel import (
    VirtualStep,
    _mixed_hvp_finite_difference,
    first_order,
    second_order,
)
from hyperdarts.modules.search import HyperDARTSSearch

CELL_TYPES = ("normal", "reduce")
LAMBDA_MIN, LAMBDA_MAX = 1e-3, 1.0


# --- helpers ---------------------------------------------------------------------------------


def make_module(seed: int = 0, **overrides) -> HyperDARTSSearch:
    """A tiny float64 search module whose hypernetwork is far from uniform."""
    torch.manual_seed(seed)
    kwargs = dict(
        num_channels=1,
        image_size=8,
        num_classes=3,
        init_channels=2,
        num_cells=3,
        num_nodes=2,
        lambda_min=LAMBDA_MIN,
        lambda_max=LAMBDA_MAX,
        seed=seed,
    )
    kwargs.update(overrides)
    module = HyperDARTSSearch(**kwargs).double()
    with torch.no_grad():
        for p in module.hypernet.parameters():
            p.copy_(0.7 * torch.randn_like(p))
    return module


def make_batch(n: int, seed: int, image_size: int = 8, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, image_size, image_size, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def hand_t(lam: float) -> float:
    return (math.log(lam) - math.log(LAMBDA_MIN)) / (math.log(LAMBDA_MAX) - math.log(LAMBDA_MIN))


def flat(tensors) -> torch.Tensor:
    if isinstance(tensors, dict):
        tensors = [tensors[k] for k in sorted(tensors)]
    return torch.cat([t.reshape(-1) for t in tensors])


def rel_err(got, ref) -> float:
    got, ref = flat(got), flat(ref)
    return float((got - ref).norm() / ref.norm())


def ref_probs(alpha, tau, noise=None, batch_size=None):
    """softmax((α + g)/τ), with per-example noise cut to the batch's first rows."""
    out = {}
    for ct in CELL_TYPES:
        logits = alpha[ct]
        if noise is not None:
            g = noise[ct]
            if g.dim() == 3:
                g = g[:batch_size]
            logits = logits + g
        out[ct] = torch.softmax(logits / tau, dim=-1)
    return out


def ref_loss(net, params, alpha, batch, tau, noise=None):
    x, y = batch
    logits = functional_call(net, params, (x, ref_probs(alpha, tau, noise, x.shape[0])))
    return F.cross_entropy(logits, y)


def unrolled_val_loss(loss_fn, params, alpha, train_batch, val_batch, lr, momentum, wd, buffers):
    """L_val(w'(α), α), w' = w − ξ(∇_w L_train(w, α) + wd·w + momentum·buf), differentiable in α."""
    weights = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    train_loss = loss_fn(weights, alpha, train_batch)
    grads = torch.autograd.grad(
        train_loss, list(weights.values()), create_graph=True, allow_unused=True
    )
    unrolled = {}
    for (k, w), g in zip(weights.items(), grads):
        g = torch.zeros_like(w) if g is None else g
        buf = buffers.get(k, torch.zeros_like(w))
        unrolled[k] = w.detach() - lr * (g + wd * w.detach() + momentum * buf)
    return loss_fn(unrolled, alpha, val_batch), unrolled


def alpha_leaves(module: HyperDARTSSearch, lam: float):
    with torch.no_grad():
        alpha = module.hypernet(hand_t(lam))
    return {k: v.detach().clone().requires_grad_(True) for k, v in alpha.items()}


def net_params(module: HyperDARTSSearch):
    return {k: v.detach().clone() for k, v in module.net.named_parameters()}


def take_real_sgd_step(module, lr, momentum, wd, lam, batch):
    """One genuine SGD step on the weights, so that the optimizer holds momentum buffers."""
    opt = torch.optim.SGD(module.net.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    with torch.no_grad():
        probs = module.probs(lam)
    loss = F.cross_entropy(module.net(batch[0], probs), batch[1])
    opt.zero_grad()
    loss.backward()
    opt.step()
    return opt


def alpha_loss(module):
    """The module's own relaxation (noise-free) and loss, as a function of (w, α, batch)."""

    def loss(params, alpha, batch):
        return module._loss(params, module.relaxation.mean(alpha, module.tau), batch)

    return loss


def hypernet_grads(module):
    return [p.grad.detach().clone() for p in module.hypernet.parameters()]


def surrogate_theta_grads(module, batch, lam, opt=None, noise=None):
    module.hypernet.zero_grad(set_to_none=True)
    surrogate, val_loss, penalty = module.architecture_objective(batch, lam, opt, noise=noise)
    surrogate.backward()
    return hypernet_grads(module), val_loss, penalty


# --- second order, exact Hessian ------------------------------------------------------------


def test_second_order_exact_matches_autograd_through_unrolled_step():
    module = make_module(tau_start=0.8)
    module.tau = 0.8
    lam = 0.05
    alpha = alpha_leaves(module, lam)
    params = net_params(module)
    train, val = make_batch(6, 1), make_batch(5, 2)
    lr, momentum, wd = 0.4, 0.9, 3e-2
    g = torch.Generator().manual_seed(3)
    # Momentum buffers on all weights but one (a missing buffer means a zero momentum term).
    skipped = sorted(params)[0]
    buffers = {
        k: 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype)
        for k, v in params.items()
        if k != skipped
    }

    mine = partial(ref_loss, module.net, tau=0.8)
    val_loss, _ = unrolled_val_loss(mine, params, alpha, train, val, lr, momentum, wd, buffers)
    ref = dict(zip(alpha, torch.autograd.grad(val_loss, list(alpha.values()))))

    got, got_loss = second_order(
        alpha_loss(module),
        params,
        alpha,
        train,
        val,
        VirtualStep(lr, momentum, wd),
        buffers,
    )
    assert rel_err(got, ref) < 1e-8
    assert float(got_loss) == pytest.approx(val_loss.item(), rel=1e-12)

    # The test can tell: the implicit term (through w'(α)) is a sizeable part of the gradient,
    # and dropping the momentum buffers or the weight decay changes the result.
    _, unrolled = unrolled_val_loss(mine, params, alpha, train, val, lr, momentum, wd, buffers)
    frozen = {k: v.detach() for k, v in unrolled.items()}
    direct = dict(zip(alpha, torch.autograd.grad(mine(frozen, alpha, val), list(alpha.values()))))
    assert rel_err(direct, ref) > 1e-3
    no_buf, _ = second_order(mine, params, alpha, train, val, VirtualStep(lr, momentum, wd))
    assert rel_err(no_buf, ref) > 1e-4
    no_wd, _ = second_order(mine, params, alpha, train, val, VirtualStep(lr, momentum), buffers)
    assert rel_err(no_wd, ref) > 1e-6


@pytest.mark.parametrize("kind", ["piecewise", "linear"])
def test_module_second_order_theta_grads_match_reference(kind):
    lr, momentum, wd, tau, lam = 0.3, 0.8, 1e-2, 0.7, 0.03
    # The module's own w_* hyperparameters differ from the optimizer's: the optimizer must win.
    module = make_module(hypernet=kind, order=2, tau_start=tau, w_lr=0.01, w_momentum=0.5)
    batch = {"weight": make_batch(6, 11), "arch": make_batch(4, 12)}
    opt = take_real_sgd_step(module, lr, momentum, wd, lam, batch["weight"])
    buffers = {
        name: opt.state[p]["momentum_buffer"].clone() for name, p in module.net.named_parameters()
    }
    assert all(b.abs().sum() > 0 for b in buffers.values())

    got, got_loss, got_penalty = surrogate_theta_grads(module, batch, lam, opt)

    theta = list(module.hypernet.parameters())
    alpha = module.hypernet(hand_t(lam))
    mine = partial(ref_loss, module.net, tau=tau)
    val_loss, _ = unrolled_val_loss(
        mine, net_params(module), alpha, batch["weight"], batch["arch"], lr, momentum, wd, buffers
    )
    penalty = module.complexity(ref_probs(alpha, tau))
    ref = torch.autograd.grad(val_loss + lam * penalty, theta)

    assert rel_err(got, ref) < 1e-8
    assert float(got_loss) == pytest.approx(val_loss.item(), rel=1e-12)
    assert float(got_penalty) == pytest.approx(penalty.item(), rel=1e-12)
    # Without the optimizer (hence without its buffers and hyperparameters) the result differs.
    without, _, _ = surrogate_theta_grads(module, batch, lam, None)
    assert rel_err(without, ref) > 1e-4


def test_virtual_step_is_the_step_torch_sgd_takes():
    """L_val at the unrolled weights equals L_val after a real torch SGD step (same grads)."""
    lr, momentum, wd, lam = 0.2, 0.9, 1e-2, 0.05
    module = make_module(order=2)
    batch = {"weight": make_batch(6, 71), "arch": make_batch(4, 72)}
    opt = take_real_sgd_step(module, lr, momentum, wd, lam, make_batch(6, 73))
    _, val_loss, _ = module.architecture_objective(batch, lam, opt)

    net = copy.deepcopy(module.net)
    real = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    real.load_state_dict(opt.state_dict())
    with torch.no_grad():
        probs = module.probs(lam)
    x, y = batch["weight"]
    real.zero_grad()
    F.cross_entropy(net(x, probs), y).backward()
    real.step()
    with torch.no_grad():
        ref = F.cross_entropy(net(batch["arch"][0], probs), batch["arch"][1])
    assert val_loss.item() == pytest.approx(ref.item(), rel=1e-12)
    with torch.no_grad():
        before = F.cross_entropy(module.net(batch["arch"][0], probs), batch["arch"][1])
    assert abs(before.item() - ref.item()) > 1e-6


@pytest.mark.parametrize("per_example", [True, False])
def test_module_second_order_gumbel_shared_noise_matches_reference(per_example):
    lr, momentum, wd, tau, lam = 0.3, 0.9, 3e-4, 1.5, 0.2
    module = make_module(
        order=2, relaxation="gumbel", gumbel_per_example=per_example, tau_start=tau
    )
    # Different batch sizes: each pass takes the first rows of the one per-example sample.
    batch = {"weight": make_batch(6, 21), "arch": make_batch(4, 22)}
    opt = take_real_sgd_step(module, lr, momentum, wd, lam, batch["weight"])
    buffers = {n: opt.state[p]["momentum_buffer"].clone() for n, p in module.net.named_parameters()}
    g = torch.Generator().manual_seed(5)
    shape = (6, 5, 8) if per_example else (5, 8)
    noise = {
        ct: -torch.log(-torch.log(torch.rand(shape, generator=g, dtype=torch.float64)))
        for ct in CELL_TYPES
    }

    got, _, _ = surrogate_theta_grads(module, batch, lam, opt, noise=noise)

    theta = list(module.hypernet.parameters())
    alpha = module.hypernet(hand_t(lam))
    mine = partial(ref_loss, module.net, tau=tau, noise=noise)
    val_loss, _ = unrolled_val_loss(
        mine, net_params(module), alpha, batch["weight"], batch["arch"], lr, momentum, wd, buffers
    )
    penalty = module.complexity(ref_probs(alpha, tau))  # the penalty is noise-free
    ref = torch.autograd.grad(val_loss + lam * penalty, theta)
    assert rel_err(got, ref) < 1e-8

    # Another noise sample gives another gradient: the match above is not an accident of noise
    # being ignored.
    other = {ct: v.roll(1, dims=-1) for ct, v in noise.items()}
    different, _, _ = surrogate_theta_grads(module, batch, lam, opt, noise=other)
    assert rel_err(different, ref) > 1e-2


def test_fresh_gumbel_noise_per_pass_does_not_match():
    """What the reference DARTS-style code does (new noise in every pass) is measurably wrong."""
    tau, lam, lr = 1.0, 0.1, 0.3
    module = make_module(relaxation="gumbel", gumbel_per_example=True, tau_start=tau)
    alpha = alpha_leaves(module, lam)
    params = net_params(module)
    train, val = make_batch(6, 31), make_batch(6, 32)
    shared = module._noise(6)
    mine = partial(ref_loss, module.net, tau=tau, noise=shared)
    val_loss, _ = unrolled_val_loss(mine, params, alpha, train, val, lr, 0.0, 0.0, {})
    ref = dict(zip(alpha, torch.autograd.grad(val_loss, list(alpha.values()))))

    step = VirtualStep(lr)

    def shared_loss(p, a, b):
        return module._loss(p, module.relaxation.sample(a, tau, shared), b)

    same, _ = second_order(shared_loss, params, alpha, train, val, step)
    assert rel_err(same, ref) < 1e-8

    def fresh(p, a, b):
        return module._loss(p, module.relaxation.sample(a, tau, module._noise(b[0].shape[0])), b)

    wrong, _ = second_order(fresh, params, alpha, train, val, step)
    assert rel_err(wrong, ref) > 0.1


# --- second order, finite-difference Hessian, on a smooth toy --------------------------------


def toy_loss(params, alpha, batch):
    """α["mix"] mixes a tanh and a softplus branch; α["scale"] scales the output. Smooth."""
    x, y = batch
    p = torch.softmax(alpha["mix"], dim=-1)
    h = p[0] * torch.tanh(x @ params["w1"]) + p[1] * F.softplus(x @ params["w2"])
    out = (h @ params["v"]) * (1 + alpha["scale"])
    return ((out - y) ** 2).mean()


def toy_setup():
    g = torch.Generator().manual_seed(7)

    def rnd(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    params = {"w1": rnd(3, 5), "w2": rnd(3, 5), "v": rnd(5)}
    alpha = {"mix": rnd(2, scale=0.5), "scale": rnd((), scale=0.1)}
    train = (rnd(16, 3), rnd(16))
    val = (rnd(12, 3), rnd(12))
    buffers = {k: rnd(*v.shape, scale=0.2) for k, v in params.items()}
    return params, alpha, train, val, buffers


def toy_reference(step: VirtualStep):
    params, alpha, train, val, buffers = toy_setup()
    alpha = {k: v.clone().requires_grad_(True) for k, v in alpha.items()}
    val_loss, unrolled = unrolled_val_loss(
        toy_loss, params, alpha, train, val, step.lr, step.momentum, step.weight_decay, buffers
    )
    ref = dict(zip(alpha, torch.autograd.grad(val_loss, list(alpha.values()))))
    frozen = {k: v.detach() for k, v in unrolled.items()}
    direct = dict(
        zip(alpha, torch.autograd.grad(toy_loss(frozen, alpha, val), list(alpha.values())))
    )
    return ref, direct


STEP = VirtualStep(lr=0.3, momentum=0.9, weight_decay=1e-2)


def test_toy_exact_matches_reference():
    ref, _ = toy_reference(STEP)
    params, alpha, train, val, buffers = toy_setup()
    got, _ = second_order(toy_loss, params, alpha, train, val, STEP, buffers)
    assert rel_err(got, ref) < 1e-10


@pytest.mark.parametrize("fd_epsilon", [1e-2, 3e-3, 1e-3])
def test_finite_difference_matches_reference(fd_epsilon):
    ref, direct = toy_reference(STEP)
    # The Hessian term is far from negligible in this toy (ξ large): a factor ε instead of
    # 1/(2ε) would leave ≈ the direct term, which is this far from the reference.
    assert rel_err(direct, ref) > 0.05
    params, alpha, train, val, buffers = toy_setup()
    got, _ = second_order(
        toy_loss, params, alpha, train, val, STEP, buffers, "finite_difference", fd_epsilon
    )
    assert rel_err(got, ref) < 1e-3
    assert rel_err(got, ref) < 1e-2 * rel_err(direct, ref)


def test_finite_difference_is_central_with_factor_one_over_two_eps():
    """The error shrinks like ε² (central difference), and the pt.darts factor is far off."""
    ref, direct = toy_reference(STEP)
    params, alpha, train, val, buffers = toy_setup()

    def fd(eps):
        got, _ = second_order(
            toy_loss, params, alpha, train, val, STEP, buffers, "finite_difference", eps
        )
        return rel_err(got, ref)

    coarse, fine = fd(1e-1), fd(1e-2)
    assert coarse > 0  # really a finite difference, not the exact product
    assert coarse / fine > 30  # ε² convergence (a one-sided difference would give ~10)

    # Rebuild the central difference by hand with the wrong factor, (p − n)/2·ε (pt.darts):
    # it collapses onto the direct term and misses the reference.
    _, unrolled = unrolled_val_loss(
        toy_loss, params, alpha, train, val, STEP.lr, STEP.momentum, STEP.weight_decay, buffers
    )
    frozen = {k: v.detach().requires_grad_(True) for k, v in unrolled.items()}
    v = dict(zip(frozen, torch.autograd.grad(toy_loss(frozen, alpha, val), list(frozen.values()))))
    eps = 1e-2 / float(flat(v).norm())
    a = {k: t.clone().requires_grad_(True) for k, t in alpha.items()}

    def grad_alpha(w):
        return torch.autograd.grad(toy_loss(w, a, train), list(a.values()))

    plus = grad_alpha({k: w + eps * v[k] for k, w in params.items()})
    minus = grad_alpha({k: w - eps * v[k] for k, w in params.items()})
    keys = list(alpha)
    right = {k: direct[k] - STEP.lr * (p - n) / (2 * eps) for k, p, n in zip(keys, plus, minus)}
    wrong = {k: direct[k] - STEP.lr * (p - n) / 2 * eps for k, p, n in zip(keys, plus, minus)}
    assert rel_err(right, ref) < 1e-3
    assert rel_err(wrong, ref) > 0.05


def test_zero_learning_rate_second_order_is_first_order():
    params, alpha, train, val, buffers = toy_setup()
    so, _ = second_order(toy_loss, params, alpha, train, val, VirtualStep(0.0, 0.9, 1e-2), buffers)
    fo, _ = first_order(toy_loss, params, alpha, val)
    assert rel_err(so, fo) < 1e-12


# --- first order ------------------------------------------------------------------------------


def test_first_order_matches_autograd():
    module = make_module()
    lam = 0.1
    alpha = alpha_leaves(module, lam)
    params = net_params(module)
    val = make_batch(5, 41)
    loss = ref_loss(module.net, params, alpha, val, module.tau)
    ref = dict(zip(alpha, torch.autograd.grad(loss, list(alpha.values()))))
    got, got_loss = first_order(alpha_loss(module), params, alpha, val)
    assert rel_err(got, ref) < 1e-12
    assert float(got_loss) == pytest.approx(loss.item(), rel=1e-12)
    assert float(flat(ref).norm()) > 0


def test_first_order_treats_the_weights_as_constants_without_copying_them():
    """The pass sees the network's own parameter tensors, not requiring grad (so autograd saves
    nothing for w's gradients), and they require grad again afterwards, even if the loss fails."""
    module = make_module()
    params = dict(module.net.named_parameters())
    seen = []

    def loss_fn(weights, alpha, batch):
        seen.append([(w is params[k], w.requires_grad) for k, w in weights.items()])
        return alpha_loss(module)(weights, alpha, batch)

    first_order(loss_fn, params, alpha_leaves(module, 0.1), make_batch(5, 41))
    assert seen == [[(True, False)] * len(params)]
    assert all(w.requires_grad for w in params.values())

    def failing(weights, alpha, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        first_order(failing, params, alpha_leaves(module, 0.1), make_batch(5, 41))
    assert all(w.requires_grad for w in params.values())


@pytest.mark.parametrize("kind", ["constant", "linear", "piecewise", "mlp"])
def test_module_first_order_theta_grads(kind):
    tau, lam = 0.9, 0.02  # t ≈ 0.43: strictly inside a piece, nonzero for the linear slope
    module = make_module(hypernet=kind, order=1, tau_start=tau, num_knots=4, mlp_hidden=6)
    batch = {"weight": make_batch(6, 51), "arch": make_batch(5, 52)}
    got, _, _ = surrogate_theta_grads(module, batch, lam)

    theta = list(module.hypernet.parameters())
    alpha = module.hypernet(hand_t(lam))
    loss = ref_loss(module.net, net_params(module), alpha, batch["arch"], tau)
    penalty = module.complexity(ref_probs(alpha, tau))
    ref = torch.autograd.grad(loss + lam * penalty, theta, retain_graph=True)
    assert rel_err(got, ref) < 1e-8
    # The gradient reaches every parameter tensor of the hypernetwork through α = G(λ).
    for name, grad in zip((n for n, _ in module.hypernet.named_parameters()), got):
        assert grad.abs().sum() > 0, name
    # The penalty is in the objective: leaving out λ·C changes the gradient.
    no_penalty = torch.autograd.grad(loss, theta)
    assert rel_err(no_penalty, ref) > 1e-3

    if kind == "piecewise":
        # t = hand_t(0.02) lies between knots 1/3 and 2/3: only anchors 1 and 2 get gradient.
        (anchors,) = got
        nonzero = [bool(anchors[k].abs().sum() > 0) for k in range(anchors.shape[0])]
        assert nonzero == [False, True, True, False]


# --- no side effects on the weights ------------------------------------------------------------


@pytest.mark.parametrize("order,hessian", [(1, "exact"), (2, "exact"), (2, "finite_difference")])
def test_architecture_objective_leaves_weights_alone(order, hessian):
    lam = 0.1
    module = make_module(order=order, hessian=hessian)
    batch = {"weight": make_batch(6, 61), "arch": make_batch(4, 62)}
    opt = take_real_sgd_step(module, 0.1, 0.9, 3e-4, lam, batch["weight"])
    weights = {k: v.detach().clone() for k, v in module.net.state_dict().items()}
    grads = {k: p.grad.clone() for k, p in module.net.named_parameters()}
    buffers = {k: opt.state[p]["momentum_buffer"].clone() for k, p in module.net.named_parameters()}

    surrogate, _, _ = module.architecture_objective(batch, lam, opt)
    surrogate.backward()

    after = module.net.state_dict()
    assert weights.keys() == after.keys()
    for k, v in weights.items():
        assert torch.equal(v, after[k]), k
    for k, p in module.net.named_parameters():
        assert torch.equal(grads[k], p.grad), k
        assert torch.equal(buffers[k], opt.state[p]["momentum_buffer"]), k


# --- Fair DARTS and DrNAS relaxations through the module -------------------------------------


def sigmoid_probs(alpha, tau):
    return {ct: 1 / (1 + torch.exp(-alpha[ct] / tau)) for ct in CELL_TYPES}


def zero_one_loss(alpha, weight):
    sig = torch.cat([(1 / (1 + torch.exp(-alpha[ct]))).reshape(-1) for ct in CELL_TYPES])
    return -weight * ((sig - 0.5) ** 2).sum() / sig.numel()


@pytest.mark.parametrize("order", [1, 2])
def test_fair_darts_theta_grads_match_reference(order):
    """θ-gradient of L_val(w'(m), m) + λ·C(m) + zero-one loss, m = σ(G_θ(λ)/τ), by autograd."""
    lr, tau, lam, w01 = 0.3, 0.9, 0.05, 10.0
    module = make_module(order=order, relaxation="sigmoid", tau_start=tau, zero_one_weight=w01)
    batch = {"weight": make_batch(6, 81), "arch": make_batch(5, 82)}
    opt = take_real_sgd_step(module, lr, 0.0, 0.0, lam, batch["weight"])
    got, _, got_penalty = surrogate_theta_grads(module, batch, lam, opt)

    theta = list(module.hypernet.parameters())
    alpha = module.hypernet(hand_t(lam))

    def loss(params, a, b):
        return F.cross_entropy(
            functional_call(module.net, params, (b[0], sigmoid_probs(a, tau))), b[1]
        )

    params = net_params(module)
    if order == 1:
        val_loss = loss(params, alpha, batch["arch"])
    else:
        val_loss, _ = unrolled_val_loss(
            loss, params, alpha, batch["weight"], batch["arch"], lr, 0.0, 0.0, {}
        )
    penalty = module.complexity(sigmoid_probs(alpha, tau))
    total = val_loss + lam * penalty
    without = torch.autograd.grad(total, theta, retain_graph=True)
    ref = torch.autograd.grad(total + zero_one_loss(alpha, w01), theta)
    assert rel_err(got, ref) < 1e-8
    assert float(got_penalty) == pytest.approx(penalty.item(), rel=1e-12)
    # The zero-one loss is a sizeable part of the gradient: without it the result differs.
    assert rel_err(got, without) > 1e-3


def test_drnas_theta_grads_match_reference():
    """First order with one Dirichlet sample m(β(θ)) shared by the step, plus the KL term."""
    lam, kl_weight, prior = 0.05, 0.1, 2.0
    module = make_module(
        relaxation="dirichlet", dirichlet_kl_weight=kl_weight, dirichlet_prior=prior
    )
    batch = {"weight": make_batch(6, 91), "arch": make_batch(5, 92)}
    noise = module._noise(6)
    got, _, _ = surrogate_theta_grads(module, batch, lam, None, noise=noise)

    theta = list(module.hypernet.parameters())
    alpha = module.hypernet(hand_t(lam))
    sample, kl, mean = {}, 0.0, {}
    for ct in CELL_TYPES:
        beta = F.elu(alpha[ct]) + 1
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(int(noise[ct]))
            sample[ct] = torch.distributions.Dirichlet(beta).rsample()
        mean[ct] = beta / beta.sum(-1, keepdim=True)
        # KL(Dir(β) ‖ Dir(prior)) written out (lgamma/digamma), per edge.
        b0 = beta.sum(-1)
        p = torch.full_like(beta, prior)
        kl = (
            kl
            + (
                torch.lgamma(b0)
                - torch.lgamma(beta).sum(-1)
                - torch.lgamma(p.sum(-1))
                + torch.lgamma(p).sum(-1)
                + ((beta - p) * (torch.digamma(beta) - torch.digamma(b0)[..., None])).sum(-1)
            ).sum()
        )
    x, y = batch["arch"]
    val_loss = F.cross_entropy(functional_call(module.net, net_params(module), (x, sample)), y)
    total = val_loss + lam * module.complexity(mean) + kl_weight * kl
    ref = torch.autograd.grad(total, theta)
    assert rel_err(got, ref) < 1e-8
    # Another sample gives another gradient.
    other, _, _ = surrogate_theta_grads(module, batch, lam, None, noise=module._noise(6))
    assert rel_err(other, ref) > 1e-3


def test_finite_difference_passes_run_in_full_precision_under_autocast():
    """Under bf16 autocast the w± passes still run in float32: the difference quotient of two
    nearly equal gradients would otherwise be mostly rounding error."""
    params, alpha, train, _, buffers = toy_setup()
    params = {k: v.float() for k, v in params.items()}
    alpha = {k: v.float().requires_grad_(True) for k, v in alpha.items()}
    train = tuple(t.float() for t in train)
    v = {k: b.float() for k, b in buffers.items()}
    ref = _mixed_hvp_finite_difference(toy_loss, params, alpha, train, v, 0.01)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _mixed_hvp_finite_difference(toy_loss, params, alpha, train, v, 0.01)
        # What the same difference gives when its passes are left to autocast: visibly off.
        eps = 0.01 / float(torch.sqrt(sum((t**2).sum() for t in v.values())))
        plus = {k: w + eps * v[k] for k, w in params.items()}
        minus = {k: w - eps * v[k] for k, w in params.items()}
        g_plus = torch.autograd.grad(toy_loss(plus, alpha, train), list(alpha.values()))
        g_minus = torch.autograd.grad(toy_loss(minus, alpha, train), list(alpha.values()))
    low = {k: (gp - gm) / (2 * eps) for k, gp, gm in zip(alpha, g_plus, g_minus)}
    assert rel_err(got, ref) < 1e-6
    assert rel_err(low, ref) > 1e-2
