"""The accuracy-size front of a set of architectures, and its hypervolume.

Methods that give a family of architectures (a hypernetwork, repeated searches at several
penalties, random baselines) are compared by the whole trade-off they reach, not one point. A
point is ``(params, accuracy)``: fewer parameters and higher accuracy are better. One point
dominates another when it is at least as good in both.

The hypervolume is the area, in the (params, accuracy) plane, of the region some point dominates,
bounded by a reference point ``(ref_params, ref_accuracy)``: the set of ``(p, a)`` with
``p <= ref_params`` and ``a >= ref_accuracy`` that some point ``(p_i, a_i)`` dominates
(``p_i <= p`` and ``a_i >= a``). More area: a better front. Use one reference for all the methods
being compared, e.g. the largest architecture's parameter count and chance accuracy.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

Point = tuple[float, float]


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The non-dominated points, by parameters ascending (so accuracy strictly rises).

    Equal points are kept once; of points with equal parameters only the most accurate stays.
    """
    front: list[Point] = []
    for params, accuracy in sorted(_check_points(points), key=lambda p: (p[0], -p[1])):
        if not front or accuracy > front[-1][1]:
            front.append((params, accuracy))
    return front


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """The area dominated by the points and bounded by ``reference`` = (ref_params, ref_accuracy).

    Points with more parameters than the reference or less accuracy add nothing; no points (or
    none within the reference) give 0. In units of parameters x accuracy: compare methods with
    :func:`normalized_hypervolume`, or with one reference for all.
    """
    ref_params, ref_accuracy = _check_reference(reference)
    inside = [(p, a) for p, a in _check_points(points) if p <= ref_params and a >= ref_accuracy]
    front = pareto_front(inside)
    area = 0.0
    # Between a front point's parameters and the next one's, that point is the most accurate
    # of all points at most that large: a staircase of rectangles down to the reference accuracy.
    for (params, accuracy), right in zip(front, [p for p, _ in front[1:]] + [ref_params]):
        area += (right - params) * (accuracy - ref_accuracy)
    return area


def normalized_hypervolume(points: Sequence[Point], reference: Point) -> float:
    """The hypervolume as a fraction of the best possible one, in [0, 1].

    Parameters are scaled by the reference (``params / ref_params`` in [0, 1]) and accuracy from
    the reference accuracy to a perfect 1 (``(accuracy - ref_accuracy) / (1 - ref_accuracy)``),
    so 1 would be a zero-parameter perfect classifier, and numbers are comparable across methods,
    datasets and model scales that share the reference's meaning (e.g. the largest model and
    chance accuracy). Accuracies must be fractions in [0, 1].
    """
    ref_params, ref_accuracy = _check_reference(reference)
    if ref_params <= 0:
        raise ValueError(f"reference params {ref_params}: must be > 0 to normalize by it")
    if not 0 <= ref_accuracy < 1:
        raise ValueError(
            f"reference accuracy {ref_accuracy}: must be in [0, 1) to normalize (1 - it); give "
            "accuracies as fractions, not percentages"
        )
    for params, accuracy in _check_points(points):
        if not 0 <= accuracy <= 1:
            raise ValueError(
                f"point ({params}, {accuracy}): accuracy must be a fraction in [0, 1] to "
                "normalize; give accuracies as fractions, not percentages"
            )
    return hypervolume(points, reference) / (ref_params * (1 - ref_accuracy))


def _check_points(points: Sequence[Point]) -> list[Point]:
    checked = []
    for i, point in enumerate(points):
        params, accuracy = _pair(point, f"points[{i}]")
        if params < 0:
            raise ValueError(f"points[{i}] = {point!r}: a parameter count cannot be negative")
        checked.append((params, accuracy))
    return checked


def _check_reference(reference: Point) -> Point:
    return _pair(reference, "reference")


def _pair(value: object, where: str) -> Point:
    """Two finite real numbers, (params, accuracy), as given; anything else is named."""
    try:
        items = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        items = ()
    if isinstance(value, (str, bytes)) or len(items) != 2:
        raise ValueError(f"{where} = {value!r}: expected a pair (params, accuracy)")
    for x in items:
        if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
            raise ValueError(f"{where} = {value!r}: params and accuracy must be finite numbers")
    return items[0], items[1]
