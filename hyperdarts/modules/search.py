"""The search: a supernet whose mixing weights come from a hypernetwork conditioned on λ.

Each training step samples one λ, takes an architecture step on an architecture batch (updating the
hypernetwork θ on L_val + λ·C), then a weight step on a weight batch (updating the supernet's
weights w on L_train). Optimization is manual: two optimizers, alternating, as in DARTS. A step
whose loss or gradient is not finite is skipped (hyperdarts.nonfinite).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from hyperdarts.bilevel import HessianKind, VirtualStep, first_order, second_order
from hyperdarts.compiling import (
    CompileMode,
    SupernetFn,
    compile_mode,
    supernet_function,
    validate_compile,
)
from hyperdarts.complexity import ComplexityMetric, ExpectedComplexity, cost_tables
from hyperdarts.distributed import average_gradients, broadcast_parameters, exclude_from_ddp
from hyperdarts.errors import ConfigError
from hyperdarts.hypernetworks import HypernetKind, build_hypernetwork
from hyperdarts.nonfinite import StepGuard, buffer_snapshot, is_finite_step, restore_buffers
from hyperdarts.relaxation import (
    LambdaSampler,
    Noise,
    RelaxationKind,
    TemperatureSchedule,
    Weights,
    build_relaxation,
)
from hyperdarts.search_space.cells import num_edges
from hyperdarts.search_space.genotypes import Genotype, derive_genotype, one_hot
from hyperdarts.search_space.networks import SuperNet
from hyperdarts.search_space.ops import PRIMITIVES

Batch = tuple[torch.Tensor, torch.Tensor]


class HyperDARTSSearch(L.LightningModule):
    """Hypernetwork-relaxed DARTS search with complexity control.

    Args:
        num_channels, image_size, num_classes: linked from the data module by the CLI.
        init_channels, num_cells, num_nodes, stem_multiplier, primitives: the search space.
        lambda_min, lambda_max: range of the complexity weight λ, sampled log-uniformly;
            lambda_min = lambda_max fixes λ (a fixed-penalty search; 0: no penalty).
        hypernet: constant (α independent of λ: DARTS), linear, piecewise (num_knots), or mlp
            (mlp_hidden).
        relaxation: softmax (DARTS); gumbel (noise per example if gumbel_per_example); sigmoid
            (Fair DARTS, zero-one loss weighted by zero_one_weight); dirichlet (DrNAS, KL to a
            Dirichlet(dirichlet_prior) weighted by dirichlet_kl_weight). The temperature decays
            exponentially from tau_start to tau_end over the epochs (dirichlet ignores it).
        complexity: params or flops of the relaxed supernet, normalized to [0, 1].
        order: 1 (first order) or 2 (unrolled); hessian: exact (double backward) or
            finite_difference (DARTS's, with ε = fd_epsilon / ‖v‖).
        w_*: SGD for the weights, cosine from w_lr to w_lr_min, gradient norm clipped at grad_clip.
        arch_*: Adam for the hypernetwork.
        val_lambdas: number of log-spaced λ at which validation measures accuracy and complexity.
        seed: seeds λ sampling and Gumbel noise (their generator is saved in checkpoints).
        max_consecutive_skips: stop the search after this many optimizer steps in a row were
            skipped for a non-finite loss or gradient (each batch makes two steps).
        share_source_ops, group_ops: the supernet's fast path (same results, less work): work
            that depends only on an edge's source node done once per source; identical conv ops
            of the edges leaving one node run as one wider op. Off: the plain per-edge loop.
        channels_last: NHWC memory layout for the supernet (faster convolutions on GPUs). For
            bf16 autocast set the Trainer's ``precision: bf16-mixed``; the finite-difference
            Hessian then still runs in full precision.
        checkpoint_cells: recompute each cell's activations during backward instead of keeping
            them (torch.utils.checkpoint): a fraction of the activation memory for about one more
            forward per pass; for large batches. No saving for the exact Hessian's training pass.
        compile: torch.compile the supernet passes of the search step (hyperdarts.compiling):
            false; true or default (fused kernels); reduce-overhead (fused kernels replayed as
            CUDA graphs, for GPUs); max-autotune. The first steps then take minutes to compile;
            worth it on GPUs, where launching small kernels dominates a step. compile_backend:
            inductor, or aot_eager to check tracing without generating code.
    """

    def __init__(
        self,
        num_channels: int = 3,
        image_size: int = 32,
        num_classes: int = 10,
        init_channels: int = 16,
        num_cells: int = 8,
        num_nodes: int = 4,
        stem_multiplier: int = 3,
        primitives: list[str] | None = None,
        lambda_min: float = 1e-3,
        lambda_max: float = 1.0,
        hypernet: HypernetKind = "piecewise",
        num_knots: int = 5,
        mlp_hidden: int = 32,
        relaxation: RelaxationKind = "softmax",
        tau_start: float = 1.0,
        tau_end: float = 1.0,
        gumbel_per_example: bool = True,
        zero_one_weight: float = 10.0,
        dirichlet_kl_weight: float = 1e-3,
        dirichlet_prior: float = 1.0,
        complexity: ComplexityMetric = "params",
        order: Literal[1, 2] = 1,
        hessian: HessianKind = "exact",
        fd_epsilon: float = 0.01,
        w_lr: float = 0.025,
        w_lr_min: float = 0.001,
        w_momentum: float = 0.9,
        w_weight_decay: float = 3e-4,
        grad_clip: float = 5.0,
        arch_lr: float = 3e-4,
        arch_betas: tuple[float, float] = (0.5, 0.999),
        arch_weight_decay: float = 1e-3,
        val_lambdas: int = 5,
        seed: int = 0,
        max_consecutive_skips: int = 10,
        share_source_ops: bool = True,
        group_ops: bool = True,
        channels_last: bool = False,
        checkpoint_cells: bool = False,
        compile: CompileMode = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _validate(order, hessian, fd_epsilon, w_lr, w_lr_min, grad_clip, arch_lr, val_lambdas)
        validate_compile(compile, compile_backend)
        self.automatic_optimization = False
        self.net = SuperNet(
            num_channels,
            num_classes,
            image_size,
            init_channels,
            num_cells,
            num_nodes,
            stem_multiplier,
            tuple(primitives or PRIMITIVES),
            share_source_ops=share_source_ops,
            group_ops=group_ops,
            channels_last=channels_last,
            checkpoint_cells=checkpoint_cells,
        )
        self.primitives = self.net.primitives
        self.hypernet = build_hypernetwork(
            hypernet, num_edges(num_nodes), len(self.primitives), num_knots, mlp_hidden
        )
        self.sampler = LambdaSampler(lambda_min, lambda_max)
        self.relaxation = build_relaxation(
            relaxation, gumbel_per_example, zero_one_weight, dirichlet_kl_weight, dirichlet_prior
        )
        self.temperature = TemperatureSchedule(tau_start, tau_end)
        self.tau = tau_start
        self.complexity = ExpectedComplexity(cost_tables(self.net, image_size, complexity))
        self.rng = torch.Generator().manual_seed(seed)
        self.guard = StepGuard(max_consecutive_skips)
        self.val_grid = self.sampler.grid(val_lambdas)
        self.val_acc = torch.nn.ModuleList(
            MulticlassAccuracy(num_classes, average="micro") for _ in self.val_grid
        )
        # Under DDP only w goes through DDP's reducer: θ's gradient is averaged explicitly in
        # _architecture_step, so plain `ddp` works (hyperdarts/distributed.py); the cost tables
        # are constants, with nothing to broadcast.
        exclude_from_ddp(self, "hypernet", "complexity")
        # f(params, x, mixing weights), eager (False) and as configured (True); built on first
        # use, see supernet().
        self._supernets: dict[bool, SupernetFn] = {}

    def __getstate__(self) -> dict[str, Any]:
        # These functions hold the network they were built for: a copy must build its own.
        return {**super().__getstate__(), "_supernets": {}}

    def supernet(self, compiled: bool = True) -> SupernetFn:
        """The supernet as f(params, x, mixing weights) (hyperdarts.compiling): compiled as
        configured, or eager (``compiled=False``) for a pass that is differentiated twice."""
        compiled = compiled and compile_mode(self.hparams.compile) is not None
        if compiled not in self._supernets:
            hp = self.hparams
            mode = hp.compile if compiled else False
            self._supernets[compiled] = supernet_function(self.net, mode, hp.compile_backend)
        return self._supernets[compiled]

    # --- the relaxed architecture as a function of λ ---------------------------------------------

    def alpha(self, lam: float) -> dict[str, torch.Tensor]:
        return self.hypernet(self.sampler.normalize(lam))

    def probs(self, lam: float) -> dict[str, torch.Tensor]:
        """Noise-free mixing weights at λ: what validation, derivation and the penalty use."""
        return self.relaxation.mean(self.alpha(lam), self.tau)

    @torch.no_grad()
    def genotype(self, lam: float) -> Genotype:
        return derive_genotype(self.probs(lam), self.primitives, self.hparams.num_nodes)

    @torch.no_grad()
    def expected_complexity(self, lam: float) -> float:
        return float(self.complexity(self.probs(lam)))

    @torch.no_grad()
    def genotype_complexity(self, genotype: Genotype) -> float:
        """Normalized complexity of a discrete choice: C at the one-hot mixing weights."""
        weights = one_hot(genotype, self.primitives, self.hparams.num_nodes)
        return float(self.complexity({k: v.to(self.device) for k, v in weights.items()}))

    # --- training ---------------------------------------------------------------------------------

    def _noise(self, batch_size: int) -> Noise | None:
        """The relaxation's noise for one step (None for deterministic relaxations), drawn on the
        CPU from the checkpointed generator; ``relaxation.sample`` moves it where α is."""
        return self.relaxation.draw_noise(self.hypernet.shape[1:], batch_size, self.rng)

    def _loss(
        self, params: dict[str, torch.Tensor], weights: Weights, batch: Batch
    ) -> torch.Tensor:
        """L(w, mixing weights) on a batch; per-example weights are cut to the batch's size."""
        return self._batch_loss(self.supernet(), params, weights, batch)

    def _eager_loss(
        self, params: dict[str, torch.Tensor], weights: Weights, batch: Batch
    ) -> torch.Tensor:
        """``_loss``, never compiled: the training pass that the exact Hessian differentiates
        twice."""
        return self._batch_loss(self.supernet(compiled=False), params, weights, batch)

    @staticmethod
    def _batch_loss(
        supernet: SupernetFn, params: dict[str, torch.Tensor], weights: Weights, batch: Batch
    ) -> torch.Tensor:
        x, y = batch
        weights = {k: v[: x.shape[0]] if v.dim() == 3 else v for k, v in weights.items()}
        return F.cross_entropy(supernet(params, x, weights), y)

    def training_step(self, batch: dict[str, Batch], batch_idx: int) -> None:
        self.begin_step()
        opt_w, opt_a = self.optimizers()
        lam = self.sampler.sample(self.rng)
        arch_loss, penalty = self._architecture_step(opt_a, opt_w.optimizer, batch, lam)
        weight_loss, acc = self._weight_step(opt_w, batch["weight"], lam)
        with torch.no_grad():
            entropy = _mean_entropy(self.probs(lam))
        self.log_dict(
            {
                "train/weight_loss": weight_loss,
                "train/weight_acc": acc,
                "train/arch_loss": arch_loss,
                "train/complexity": penalty,
                "train/lambda": lam,
                "train/tau": self.tau,
                "train/alpha_entropy": entropy,
            },
            prog_bar=False,
            on_step=True,
            on_epoch=True,
            batch_size=batch["weight"][0].shape[0],
        )
        self.log("train/skipped_steps", float(self.guard.total), on_step=True, on_epoch=False)

    def begin_step(self) -> None:
        """Tell CUDA graphs (compile: reduce-overhead) that the previous step's outputs are no
        longer needed, so their memory can be reused by this step's replays."""
        if self.hparams.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()

    def _architecture_step(
        self, opt_a: Any, opt_w: torch.optim.Optimizer, batch: dict[str, Batch], lam: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        buffers = buffer_snapshot(self.net)
        surrogate, val_loss, penalty = self.architecture_objective(batch, lam, opt_w)
        opt_a.zero_grad()
        self.manual_backward(surrogate)
        # θ is outside DDP's reducer: its gradient is this rank's; average it over the ranks.
        average_gradients(self.hypernet.parameters(), self.trainer.strategy)
        loss = surrogate.detach() + val_loss.detach()
        if self._may_step(loss, list(self.hypernet.parameters()), buffers, "architecture", lam):
            opt_a.step()
        return val_loss, penalty

    def architecture_objective(
        self,
        batch: dict[str, Batch],
        lam: float,
        weight_optimizer: torch.optim.Optimizer | None = None,
        noise: Noise | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A scalar whose gradient w.r.t. θ is the architecture gradient (of the configured order)
        of L_val + λ·C (+ the relaxation's regularizer), with the validation loss and the penalty C.

        The mixing weights m = relax(G_θ(λ), noise) are computed once; the gradient w.r.t. m is
        computed on detached m (functional calls), then sent through m(θ) as a vector-Jacobian
        product: backward of Σ m·g_m + λ·C + R. Every pass of the step sees the same m, so the
        noise is shared by construction. ``weight_optimizer`` supplies ξ, momentum and weight decay
        of the virtual step (defaults: the configured values, no momentum buffer). ``noise``: the
        relaxation's noise for this step (drawn here if not given).
        """
        if noise is None:
            noise = self._noise(max(batch["weight"][0].shape[0], batch["arch"][0].shape[0]))
        alpha = self.alpha(lam)
        mix = self.relaxation.sample(alpha, self.tau, noise)
        params = dict(self.net.named_parameters())
        if self.hparams.order == 1:
            grads, val_loss = first_order(self._loss, params, mix, batch["arch"])
        else:
            step, buffers = self._virtual_step(weight_optimizer, params)
            grads, val_loss = second_order(
                self._loss,
                params,
                mix,
                batch["weight"],
                batch["arch"],
                step,
                buffers,
                self.hparams.hessian,
                self.hparams.fd_epsilon,
                train_loss_fn=self._eager_loss if self.hparams.hessian == "exact" else None,
            )
        penalty = self.complexity(self.relaxation.mean(alpha, self.tau))
        surrogate = sum((mix[k] * grads[k].detach()).sum() for k in mix) + lam * penalty
        regularizer = self.relaxation.regularizer(alpha)
        if regularizer is not None:
            surrogate = surrogate + regularizer
        return surrogate, val_loss, penalty.detach()

    def _virtual_step(
        self, optimizer: torch.optim.Optimizer | None, params: dict[str, torch.Tensor]
    ) -> tuple[VirtualStep, dict[str, torch.Tensor]]:
        hp = self.hparams
        if optimizer is None:
            return VirtualStep(hp.w_lr, hp.w_momentum, hp.w_weight_decay), {}
        group = optimizer.param_groups[0]
        buffers = {}
        for name, p in params.items():
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                buffers[name] = buf
        return VirtualStep(group["lr"], group["momentum"], group["weight_decay"]), buffers

    def _weight_step(
        self, opt_w: Any, batch: Batch, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        with torch.no_grad():
            probs = self.relaxation.sample(self.alpha(lam), self.tau, self._noise(x.shape[0]))
        buffers = buffer_snapshot(self.net)
        logits = self.supernet()(dict(self.net.named_parameters()), x, probs)
        loss = F.cross_entropy(logits, y)
        opt_w.zero_grad()
        self.manual_backward(loss)
        if self._may_step(loss, list(self.net.parameters()), buffers, "weight", lam):
            self.clip_gradients(opt_w, self.hparams.grad_clip, "norm")
            opt_w.step()
        return loss.detach(), (logits.argmax(1) == y).float().mean()

    def _may_step(
        self,
        loss: torch.Tensor,
        params: list[torch.Tensor],
        buffers: list[torch.Tensor],
        step: str,
        lam: float,
    ) -> bool:
        """Whether the step's loss and gradients are finite (on every rank). If not, undo what its
        forward passes changed (BatchNorm statistics), drop its gradients, and count it."""
        finite = self.trainer.strategy.reduce_boolean_decision(is_finite_step(loss, params))
        if not finite:
            restore_buffers(self.net, buffers)
            for p in params:
                p.grad = None
            self.log("train/skipped_lambda", lam, on_step=True, on_epoch=False)
        last = getattr(self.trainer.checkpoint_callback, "last_model_path", None)
        where = f"{step} step at λ={lam:.4g} (global step {self.global_step})"
        self.guard.record(finite, where, last)
        return finite

    def on_fit_start(self) -> None:
        broadcast_parameters(self.hypernet.parameters(), self.trainer.strategy)

    def on_train_epoch_start(self) -> None:
        epochs = self.trainer.max_epochs or 1
        self.tau = self.temperature(self.current_epoch / max(epochs - 1, 1))

    def on_train_epoch_end(self) -> None:
        self.lr_schedulers().step()

    # --- evaluation at a fixed grid of λ ---------------------------------------------------------

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: Batch, stage: str) -> None:
        x, y = batch
        for lam, acc in zip(self.val_grid, self.val_acc):
            acc(self.net(x, self.probs(lam)), y)
            self.log(f"{stage}/acc@lambda={lam:.3g}", acc, on_epoch=True, batch_size=x.shape[0])

    def on_validation_epoch_end(self) -> None:
        self._log_complexity("val")

    def on_test_epoch_end(self) -> None:
        self._log_complexity("test")

    def _log_complexity(self, stage: str) -> None:
        for lam in self.val_grid:
            self.log(f"{stage}/complexity@lambda={lam:.3g}", self.expected_complexity(lam))

    # --- optimizers and checkpoints --------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt_w = torch.optim.SGD(
            self.net.parameters(), hp.w_lr, momentum=hp.w_momentum, weight_decay=hp.w_weight_decay
        )
        opt_a = torch.optim.Adam(
            self.hypernet.parameters(),
            hp.arch_lr,
            betas=tuple(hp.arch_betas),
            weight_decay=hp.arch_weight_decay,
        )
        epochs = max(self.trainer.max_epochs or 1, 1)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt_w, epochs, eta_min=hp.w_lr_min)
        return [opt_w, opt_a], [schedule]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """What the run depends on besides weights, optimizers and schedulers (Lightning's): the
        generator of λ and Gumbel noise, the temperature, the skipped-step counters."""
        checkpoint["hyperdarts"] = {
            "rng_state": self.rng.get_state(),
            "tau": self.tau,
            "skips": self.guard.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("hyperdarts")
        if state:
            self.rng.set_state(state["rng_state"])
            self.tau = state["tau"]
            if "skips" in state:
                self.guard.load_state_dict(state["skips"])


def _mean_entropy(probs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean entropy of the edge weights, each edge normalized (sigmoid weights may not sum to 1)."""
    p = torch.cat([v.reshape(-1, v.shape[-1]) for v in probs.values()])
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(p * p.clamp_min(1e-12).log()).sum(-1).mean().detach()


def _validate(
    order: int,
    hessian: str,
    fd_epsilon: float,
    w_lr: float,
    w_lr_min: float,
    grad_clip: float,
    arch_lr: float,
    val_lambdas: int,
) -> None:
    checks = [
        (order in (1, 2), f"order={order}: use 1 (first order) or 2 (unrolled second order)"),
        (
            hessian in ("exact", "finite_difference"),
            f"hessian={hessian!r}: exact or finite_difference",
        ),
        (fd_epsilon > 0, f"fd_epsilon={fd_epsilon}: must be > 0"),
        (w_lr > 0 and math.isfinite(w_lr), f"w_lr={w_lr}: must be a positive number"),
        (0 <= w_lr_min <= w_lr, f"w_lr_min={w_lr_min}: must be in [0, w_lr={w_lr}]"),
        (grad_clip > 0, f"grad_clip={grad_clip}: must be > 0"),
        (arch_lr > 0, f"arch_lr={arch_lr}: must be > 0"),
        (val_lambdas >= 1, f"val_lambdas={val_lambdas}: need at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
