"""torch.compile of the supernet (hyperdarts.compiling) changes the cost, not the search.

The compiled path is traced with the aot_eager backend: the same Dynamo graph capture and AOT
autograd (forward and backward graphs, functional parameters) as inductor, without inductor's code
generation, which takes minutes on a CPU and is torch's own to test. In float64 the compiled search
steps must give the eager path's architecture gradients, weight-step losses and genotypes, and a
new λ, temperature or noise must not compile again.
"""

from __future__ import annotations

import pytest
import torch
from conftest import search_steps

from hyperdarts.errors import ConfigError
from hyperdarts.modules.search import HyperDARTSSearch

SPACE = {
    "num_channels": 1, "image_size": 8, "num_classes": 5, "init_channels": 4, "num_cells": 3,
    "num_nodes": 2, "primitives": ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3",
                                   "dil_conv_3x3"],
}  # fmt: skip


def search_module(order: int, hessian: str, compile: bool | str) -> HyperDARTSSearch:
    torch.manual_seed(0)
    module = HyperDARTSSearch(
        **SPACE, order=order, hessian=hessian, relaxation="gumbel", seed=3, compile=compile,
        compile_backend="aot_eager",
    ).double()  # fmt: skip
    with torch.no_grad():
        for p in module.hypernet.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return module


def graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("order, hessian", [(1, "exact"), (2, "exact"), (2, "finite_difference")])
def test_compiled_search_steps_equal_eager_and_compile_once(order: int, hessian: str) -> None:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = search_steps(search_module(order, hessian, False), 3)
    assert graphs() == 0
    compiled = search_steps(search_module(order, hessian, "default"), 3)
    for e, c in zip(eager["arch_grads"], compiled["arch_grads"]):
        assert float(e.norm()) > 1e-6
        torch.testing.assert_close(c, e, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(compiled["weight_losses"], eager["weight_losses"])
    assert compiled["genotypes"] == eager["genotypes"]
    # Graphs were compiled in the first step only: λ, τ and the noise are graph inputs.
    assert compiled["graphs"][0] >= 2
    assert compiled["graphs"][1:] == [compiled["graphs"][0]] * 2


def test_compile_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="compile='fast'"):
        HyperDARTSSearch(**SPACE, compile="fast")
    assert HyperDARTSSearch(**SPACE, compile=True).supernet() is not None
    with pytest.raises(ConfigError, match="compile_backend"):
        HyperDARTSSearch(**SPACE, compile="default", compile_backend="")


def test_a_copy_compiles_its_own_network() -> None:
    import copy

    module = search_module(1, "exact", "default")
    first, eager = module.supernet(), module.supernet(compiled=False)
    assert module.supernet() is first and module.supernet(compiled=False) is eager
    assert first is not eager
    duplicate = copy.deepcopy(module)
    assert duplicate.supernet() is not first
    assert duplicate.supernet(compiled=False) is not eager


def test_fit_with_compile_from_the_command_line(tmp_path) -> None:
    """The config switch reaches the search: a fast_dev_run fit trains through compiled graphs."""
    from conftest import CONFIGS

    from hyperdarts.cli import main

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    cli = main([
        "fit", "--config", str(CONFIGS / "digits.yaml"),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.fast_dev_run", "1",
        "--data.init_args.batch_size", "16", "--model.init_args.init_channels", "4",
        "--model.init_args.num_nodes", "2", "--model.init_args.compile", "true",
        "--model.init_args.primitives", str(SPACE["primitives"]),
        "--model.init_args.compile_backend", "aot_eager",
    ])  # fmt: skip
    assert cli.trainer.global_step == 2
    assert cli.model.hparams.compile is True
    assert graphs() >= 2  # the validation pass and the weight step


def test_eager_supernet_swaps_in_only_parameters_that_are_not_its_own(monkeypatch) -> None:
    """Its own parameters: the plain call (functional_call's swap costs ~20 µs per parameter);
    any other tensors (w', w ± εv): swapped in, and they change the output."""
    import hyperdarts.compiling as compiling
    from hyperdarts.compiling import supernet_function

    module = search_module(1, "exact", False)
    net, x = module.net, torch.randn(4, 1, 8, 8, dtype=torch.float64)
    weights = module.probs(0.1)
    f = supernet_function(net)
    own = dict(net.named_parameters())
    other = {k: 1.5 * v.detach() for k, v in own.items()}
    swapped = f(other, x, weights)
    calls = []
    real = compiling.functional_call
    monkeypatch.setattr(compiling, "functional_call", lambda *a: calls.append(1) or real(*a))
    torch.testing.assert_close(f(own, x, weights), net(x, weights))
    assert calls == []
    torch.testing.assert_close(f(other, x, weights), swapped)
    assert calls == [1]
    assert not torch.allclose(swapped, net(x, weights))
