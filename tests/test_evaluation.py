"""The DARTS evaluation network: exact parameter counts, published cells, aux head, drop path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hyperdarts.complexity import count_parameters
from hyperdarts.search_space.evaluation import (
    AuxiliaryHead,
    EvalCell,
    EvalNetwork,
    count_eval_parameters,
)
from hyperdarts.search_space.genotypes import Genotype
from hyperdarts.search_space.published import (
    PUBLISHED,
    REPORTED_PARAMS_M,
    published_genotype,
)

# Two intermediate nodes; every op kind appears, including skip_connect at stride 1 and 2.
SMALL = Genotype(
    normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 0), ("max_pool_3x3", 2)],
    normal_concat=[2, 3],
    reduce=[("avg_pool_3x3", 0), ("skip_connect", 1), ("sep_conv_5x5", 2), ("dil_conv_5x5", 1)],
    reduce_concat=[2, 3],
)

# Exact counts, aux head excluded, at C=36, L=20, 10 classes, as built by the DARTS code.
EXACT_PARAMS = {
    "DARTS_V1": 3_169_414,
    "DARTS_V2": 3_349_342,  # DARTS train.py log: "param size = 3.349342MB"
    "PC_DARTS": 3_634_678,
    "PDARTS": 3_433_798,  # chenxin061/pdarts issue #7 (3,910,224 with the aux head)
    "DRNAS": 4_099_294,
}
AUX_PARAMS_C36 = 3_910_224 - 3_433_798


def small_net(**kwargs) -> EvalNetwork:
    args = dict(num_channels=3, num_classes=10, image_size=8, init_channels=4, num_cells=3)
    return EvalNetwork(SMALL, **{**args, **kwargs})


def test_hand_count_of_small_network() -> None:
    # L=3: cell 0 normal (C=4), cells 1 and 2 reduce (C=8, 16); cell 2 follows a reduction.
    def sep(c: int, k: int) -> int:
        return 2 * dil(c, k)

    def dil(c: int, k: int) -> int:  # depthwise k x k + pointwise + BN
        return c * k * k + c * c + 2 * c

    def relu_conv_bn(c_in: int, c_out: int) -> int:
        return c_in * c_out + 2 * c_out

    def factorized_reduce(c_in: int, c_out: int) -> int:
        return 2 * c_in * (c_out // 2) + 2 * c_out

    stem = 3 * 12 * 9 + 2 * 12
    cell0 = relu_conv_bn(12, 4) + relu_conv_bn(12, 4) + sep(4, 3) + dil(4, 3)
    cell1 = relu_conv_bn(12, 8) + relu_conv_bn(8, 8) + factorized_reduce(8, 8)
    cell1 += sep(8, 5) + dil(8, 5)
    cell2 = factorized_reduce(8, 16) + relu_conv_bn(16, 16) + factorized_reduce(16, 16)
    cell2 += sep(16, 5) + dil(16, 5)
    classifier = 32 * 10 + 10
    expected = stem + cell0 + cell1 + cell2 + classifier
    assert expected == 348 + 292 + 1112 + 2800 + 330

    aux = 32 * 128 + 2 * 128 + 128 * 768 * 4 + 2 * 768 + 768 * 10 + 10
    net = small_net()
    assert count_eval_parameters(net) == expected
    assert count_parameters(net) == expected + aux
    assert count_eval_parameters(small_net(auxiliary=False)) == expected


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_cell_builds_to_reported_count(name: str) -> None:
    torch.manual_seed(0)
    net = EvalNetwork(published_genotype(name), num_channels=3, num_classes=10)
    params = count_eval_parameters(net)
    assert params == EXACT_PARAMS[name]
    assert count_parameters(net) - params == AUX_PARAMS_C36
    if name != "DARTS_V1":  # the paper gives one 3.3M for DARTS; the V1 cell builds to 3.2M
        assert round(params / 1e6, 1) == REPORTED_PARAMS_M[name]

    x = torch.randn(2, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        logits, aux = net(x)
    assert logits.shape == (2, 10) and aux is None
    net.train()
    with torch.no_grad():
        logits, aux = net(x)
    assert logits.shape == (2, 10) and aux is not None and aux.shape == (2, 10)


def test_published_lookup() -> None:
    assert published_genotype("pc-darts") is PUBLISHED["PC_DARTS"]
    with pytest.raises(KeyError, match="DARTS_V2"):
        published_genotype("ENAS")


def twice(net: EvalNetwork, x: torch.Tensor) -> tuple[tuple, tuple]:
    with torch.no_grad():
        return net(x), net(x)


def test_eval_mode_is_deterministic_without_aux() -> None:
    torch.manual_seed(0)
    net = small_net(init_channels=8, num_cells=5, drop_path_prob=0.3).eval()
    x = torch.randn(4, 3, 8, 8)
    (a, aux_a), (b, aux_b) = twice(net, x)
    assert aux_a is None and aux_b is None
    assert torch.equal(a, b)
    net.drop_path_prob = 0.0
    assert torch.equal(net(x)[0], a)


def test_drop_path_acts_in_training_only_when_positive() -> None:
    torch.manual_seed(0)
    net = small_net(init_channels=8, num_cells=5).train()
    x = torch.randn(8, 3, 8, 8)
    (a, _), (b, _) = twice(net, x)
    assert torch.equal(a, b)  # BN uses batch statistics: the same batch gives the same output
    net.drop_path_prob = 0.3
    (c, _), (d, _) = twice(net, x)
    assert not torch.allclose(c, d)
    assert not torch.allclose(a, c)


def test_drop_path_spares_identity_edges() -> None:
    skips = [("skip_connect", 0), ("skip_connect", 1)] * 2
    genotype = Genotype(normal=skips, normal_concat=[2, 3], reduce=skips, reduce_concat=[2, 3])
    cell = EvalCell(genotype, 4, 4, 4, reduction=False, reduction_prev=False).train()
    s0, s1 = torch.randn(2, 8, 4, 5, 5)
    with torch.no_grad():
        assert torch.equal(cell(s0, s1, 0.5), cell(s0, s1, 0.0))


@pytest.mark.parametrize("image_size", [28, 8])
def test_single_channel_small_images_with_aux(image_size: int) -> None:
    torch.manual_seed(0)
    net = EvalNetwork(
        SMALL, num_channels=1, num_classes=10, image_size=image_size, init_channels=8, num_cells=6
    ).train()
    logits, aux = net(torch.randn(3, 1, image_size, image_size))
    assert logits.shape == (3, 10) and aux is not None and aux.shape == (3, 10)
    (logits.sum() + aux.sum()).backward()


def test_aux_head_keeps_cifar_pooling_at_8x8() -> None:
    torch.manual_seed(0)
    head = AuxiliaryHead(16, 10).eval()
    x = torch.randn(2, 16, 8, 8)
    pooled = F.avg_pool2d(F.relu(x), 5, stride=3)
    with torch.no_grad():
        expected = head.classifier(head.features(pooled).flatten(1))
        assert torch.equal(head(x), expected)
        assert head(torch.randn(2, 16, 7, 7)).shape == (2, 10)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_channels": 0}, "num_channels"),
        ({"drop_path_prob": 1.0}, "drop_path_prob"),
        ({"num_cells": 2}, "num_cells"),
        ({"init_channels": 5}, "init_channels"),
        ({"image_size": 2}, "image_size"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        small_net(**kwargs)


def test_rejects_non_genotype() -> None:
    with pytest.raises(ValueError, match="genotype"):
        EvalNetwork("DARTS_V2", num_channels=3, num_classes=10)  # type: ignore[arg-type]
