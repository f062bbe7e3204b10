"""The accuracy-size front and its hypervolume, on fronts whose areas are computed by hand."""

from __future__ import annotations

import math
import random

import pytest

from hyperdarts.pareto import hypervolume, normalized_hypervolume, pareto_front

REF = (10, 0.5)
STAIRCASE = [(2, 0.6), (5, 0.9)]
# (5 - 2) * (0.6 - 0.5) + (10 - 5) * (0.9 - 0.5)
STAIRCASE_AREA = 0.3 + 2.0


def test_front_keeps_the_non_dominated_points_by_params_ascending() -> None:
    points = [(5, 0.9), (2, 0.6), (6, 0.7), (2, 0.5), (5, 0.9), (1, 0.4), (3, 0.6), (7, 0.9)]
    assert pareto_front(points) == [(1, 0.4), (2, 0.6), (5, 0.9)]


def test_front_of_nothing_and_of_one_point() -> None:
    assert pareto_front([]) == []
    assert pareto_front([(3, 0.7)]) == [(3, 0.7)]


def test_front_keeps_a_trade_off_whole() -> None:
    points = [(4, 0.8), (1, 0.2), (3, 0.7), (2, 0.5)]
    assert pareto_front(points) == sorted(points)


def test_single_point_is_a_rectangle_to_the_reference() -> None:
    assert hypervolume([(2, 0.8)], REF) == pytest.approx((10 - 2) * (0.8 - 0.5))


def test_two_points_form_a_staircase() -> None:
    assert hypervolume(STAIRCASE, REF) == pytest.approx(STAIRCASE_AREA)
    assert hypervolume(list(reversed(STAIRCASE)), REF) == pytest.approx(STAIRCASE_AREA)


def test_dominated_and_duplicated_points_change_nothing() -> None:
    dominated = [(6, 0.7), (5, 0.85), (2, 0.55), (9, 0.9)]
    assert hypervolume(STAIRCASE + dominated, REF) == pytest.approx(STAIRCASE_AREA)
    assert hypervolume(STAIRCASE + STAIRCASE, REF) == pytest.approx(STAIRCASE_AREA)


def test_points_beyond_the_reference_add_nothing() -> None:
    beyond = [(12, 0.99), (1, 0.4), (10.5, 1.0)]
    assert hypervolume(STAIRCASE + beyond, REF) == pytest.approx(STAIRCASE_AREA)
    assert hypervolume(beyond, REF) == 0.0
    assert hypervolume([(10, 0.9), (3, 0.5)], REF) == 0.0  # on the reference's edges
    assert hypervolume([], REF) == 0.0


def test_a_point_beyond_in_params_does_not_cut_the_last_step_short() -> None:
    # (12, 0.99) lies beyond ref_params: the step of (5, 0.9) still runs to 10.
    assert hypervolume([(5, 0.9), (12, 0.99)], REF) == pytest.approx(5 * 0.4)


def test_hypervolume_matches_counting_unit_cells() -> None:
    """Integer points: the area is the number of dominated unit squares inside the reference."""
    rng = random.Random(0)
    ref = (20, 0)
    for _ in range(30):
        points = [(rng.randint(0, 22), rng.randint(-2, 10)) for _ in range(rng.randint(1, 8))]
        cells = sum(
            any(p <= x and a >= y + 1 for p, a in points) for x in range(20) for y in range(10)
        )
        assert hypervolume(points, ref) == pytest.approx(cells), points


def test_normalized_hypervolume_is_the_fraction_of_the_ideal() -> None:
    assert normalized_hypervolume(STAIRCASE, REF) == pytest.approx(STAIRCASE_AREA / (10 * 0.5))
    assert normalized_hypervolume([(0, 1.0)], REF) == pytest.approx(1.0)
    assert normalized_hypervolume([], REF) == 0.0
    # Scaling the parameter axis (another model scale) leaves it unchanged.
    scaled = [(1000 * p, a) for p, a in STAIRCASE]
    assert normalized_hypervolume(scaled, (10_000, 0.5)) == pytest.approx(
        normalized_hypervolume(STAIRCASE, REF)
    )


@pytest.mark.parametrize(
    "points",
    [
        [(1, math.nan)],
        [(math.inf, 0.5)],
        [("3", 0.5)],
        [(True, 0.5)],
        [(1, 0.5, 3)],
        [(-1, 0.5)],
        [0.5],
    ],
)
def test_bad_points_are_named(points: list) -> None:
    with pytest.raises(ValueError, match=r"points\[0\]"):
        hypervolume(points, REF)
    with pytest.raises(ValueError, match=r"points\[0\]"):
        pareto_front(points)


@pytest.mark.parametrize("reference", [(), (10,), (10, math.nan), "ab", None])
def test_bad_reference_is_named(reference: object) -> None:
    with pytest.raises(ValueError, match="reference"):
        hypervolume(STAIRCASE, reference)  # type: ignore[arg-type]


def test_normalization_needs_fractions_and_a_positive_reference() -> None:
    with pytest.raises(ValueError, match="percentages"):
        normalized_hypervolume([(2, 85.0)], REF)
    with pytest.raises(ValueError, match="percentages"):
        normalized_hypervolume(STAIRCASE, (10, 50.0))
    with pytest.raises(ValueError, match="> 0"):
        normalized_hypervolume(STAIRCASE, (0, 0.5))
