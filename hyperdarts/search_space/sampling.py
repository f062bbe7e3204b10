"""Random architectures of the DARTS space, and random ones matched to a parameter count.

A search method is only worth its cost if it beats random architectures of the same size. The
baseline of the extended paper therefore retrains, next to each member of a searched family, a
random architecture with (nearly) the member's parameter count. Matching must not turn into an
optimization of anything but size: :func:`matched_random_genotype` starts from uniform draws and
only ever steers by the parameter count, so the architecture is a random one of that size.

The space is the one DARTS derives from: per cell type and per intermediate node, two distinct
input nodes among its predecessors, each with one op other than ``none``; every intermediate node
is concatenated into the cell output.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hyperdarts.errors import HyperDARTSError
from hyperdarts.search_space.genotypes import EDGES_PER_NODE, Genotype
from hyperdarts.search_space.networks import CELL_TYPES
from hyperdarts.search_space.ops import PRIMITIVES, validate_primitives

Edge = tuple[str, int]
Cell = tuple[Edge, ...]
Count = Callable[[Genotype], int]
Move = tuple[str, int, Edge]  # (cell type, edge index, new (op, input node))

DEFAULT_MAX_EVALUATIONS = 1000


class SamplingError(HyperDARTSError, ValueError):
    """No random architecture with the requested parameter count could be drawn."""


# --- uniform draws --------------------------------------------------------------------------------


def random_genotype(
    generator: random.Random, primitives: Sequence[str] = PRIMITIVES, num_nodes: int = 4
) -> Genotype:
    """A uniform draw from the DARTS space: the same distribution for both cell types.

    Each node's two edges are listed by input node, as DARTS derivation lists them, so that one
    architecture has one genotype (the two edges of a node are a set, not a sequence).
    """
    ops = _ops(primitives)
    _check_nodes(num_nodes)
    if not isinstance(generator, random.Random):
        raise TypeError(
            f"generator: expected a random.Random (e.g. random.Random(seed)), got "
            f"{type(generator).__name__}"
        )
    cells = [_random_cell(generator, ops, num_nodes) for _ in CELL_TYPES]
    return _genotype(cells[0], cells[1], num_nodes)


def _random_cell(rng: random.Random, ops: tuple[str, ...], num_nodes: int) -> Cell:
    edges: list[Edge] = []
    for j in range(num_nodes):
        inputs = sorted(rng.sample(range(j + 2), EDGES_PER_NODE))
        edges += [(rng.choice(ops), i) for i in inputs]
    return tuple(edges)


def _genotype(normal: Cell, reduce: Cell, num_nodes: int) -> Genotype:
    concat = tuple(range(2, 2 + num_nodes))
    return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)


def _ops(primitives: Sequence[str]) -> tuple[str, ...]:
    """The ops a genotype may use: the primitives without ``none`` (DARTS never derives it)."""
    validate_primitives(tuple(primitives))
    return tuple(p for p in primitives if p != "none")


def _check_nodes(num_nodes: int) -> None:
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise SamplingError(
            f"num_nodes={num_nodes!r}: a cell needs at least 1 intermediate node (DARTS: 4)"
        )


# --- the reachable range of parameter counts ------------------------------------------------------


@dataclass(frozen=True)
class ParameterRange:
    """The smallest and largest parameter count of the space, with genotypes that reach them."""

    smallest: int
    largest: int
    smallest_genotype: Genotype
    largest_genotype: Genotype

    def closest(self, target: int) -> int:
        return min(max(target, self.smallest), self.largest)


class _Memo:
    """``count`` once per genotype: counting builds a whole network."""

    def __init__(self, count: Count) -> None:
        self.count = count
        self.cache: dict[Genotype, int] = {}

    def __call__(self, genotype: Genotype) -> int:
        if genotype not in self.cache:
            self.cache[genotype] = int(self.count(genotype))
        return self.cache[genotype]


def parameter_range(
    count: Count, primitives: Sequence[str] = PRIMITIVES, num_nodes: int = 4
) -> ParameterRange:
    """The extreme parameter counts of the space, from about 3 x len(primitives) networks.

    The count of an evaluation network is a sum over cells, and within a cell a sum over edges
    of a cost that depends only on the op and its stride (stride 2 on a reduction cell's edges
    from nodes 0 and 1, where ``skip_connect`` becomes a factorized reduction). So the normal and
    the reduce cell can be optimized apart, and each extreme is a cell with one op everywhere,
    with either as few stride-2 edges as possible (node j reads j and j+1) or as many (every node
    reads 0 and 1). Both extremes are real genotypes, counted, so both counts are reachable.
    """
    ops = _ops(primitives)
    _check_nodes(num_nodes)
    memo = count if isinstance(count, _Memo) else _Memo(count)
    few, many = _fewest_stride2, _most_stride2
    normals = [few(op, num_nodes) for op in ops]
    reduces = [layout(op, num_nodes) for op in ops for layout in (few, many)]
    normal_cost = {c: memo(_genotype(c, reduces[0], num_nodes)) for c in normals}
    reduce_cost = {c: memo(_genotype(normals[0], c, num_nodes)) for c in reduces}
    smallest = _genotype(
        min(normals, key=normal_cost.__getitem__),
        min(reduces, key=reduce_cost.__getitem__),
        num_nodes,
    )
    largest = _genotype(
        max(normals, key=normal_cost.__getitem__),
        max(reduces, key=reduce_cost.__getitem__),
        num_nodes,
    )
    return ParameterRange(memo(smallest), memo(largest), smallest, largest)


def _fewest_stride2(op: str, num_nodes: int) -> Cell:
    return tuple((op, i) for j in range(num_nodes) for i in (j, j + 1))


def _most_stride2(op: str, num_nodes: int) -> Cell:
    return tuple((op, i) for _ in range(num_nodes) for i in (0, 1))


# --- random architectures of a given size ---------------------------------------------------------


def matched_random_genotype(
    target_params: int,
    count: Count,
    *,
    tolerance: float = 0.05,
    seed: int = 0,
    primitives: Sequence[str] = PRIMITIVES,
    num_nodes: int = 4,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
) -> Genotype:
    """A random architecture whose ``count`` is within ``tolerance`` (relative) of the target.

    ``count`` gives a genotype's parameters, e.g. ``lambda g: count_eval_parameters(spec.build(g))``
    with the :class:`~hyperdarts.family.EvalSpec` the family was costed at; each genotype is
    counted once. A target outside :func:`parameter_range` fails at once.

    Each attempt starts from a uniform draw, returned if it is in the band. Otherwise it walks:
    the single-edge re-draws (op and input node together) are tried in random order and the
    first that brings the count closer is taken; when none does, the walk restarts from a fresh
    draw. Only the count steers the walk, so nothing but size is selected for, and the result
    stays a random architecture of that size. It is deterministic for a ``seed``.
    ``max_evaluations`` bounds the genotypes considered (each draw and each tried move).
    """
    _check_request(target_params, tolerance, max_evaluations)
    ops = _ops(primitives)
    memo = _Memo(count)
    reachable = parameter_range(memo, primitives, num_nodes)
    low, high = target_params * (1 - tolerance), target_params * (1 + tolerance)
    if high < reachable.smallest or low > reachable.largest:
        raise SamplingError(_unreachable(target_params, tolerance, reachable))
    walk = _Walk(memo, random.Random(seed), ops, num_nodes, target_params, (low, high))
    found = walk.run(max_evaluations)
    if found is None:
        raise SamplingError(_exhausted(target_params, tolerance, max_evaluations, walk.closest))
    return found


def _check_request(target_params: int, tolerance: float, max_evaluations: int) -> None:
    if isinstance(target_params, bool) or not isinstance(target_params, int) or target_params < 1:
        raise SamplingError(
            f"target_params={target_params!r}: give a parameter count, an integer >= 1"
        )
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise SamplingError(
            f"tolerance={tolerance!r}: give a relative tolerance >= 0, e.g. 0.05 for ±5%"
        )
    if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int):
        raise SamplingError(f"max_evaluations={max_evaluations!r}: give an integer >= 1")
    if max_evaluations < 1:
        raise SamplingError(f"max_evaluations={max_evaluations}: give an integer >= 1")


class _Walk:
    """Restarted first-improvement random walks on the parameter count.

    It remembers the count closest to the target, for the error message when none is in band.
    """

    def __init__(
        self,
        memo: _Memo,
        rng: random.Random,
        ops: tuple[str, ...],
        num_nodes: int,
        target: int,
        band: tuple[float, float],
    ) -> None:
        self.memo, self.rng, self.ops, self.num_nodes = memo, rng, ops, num_nodes
        self.target, self.band = target, band
        self.closest = 0
        self.evaluations = 0
        self.budget = 0
        # The change of count each kind of move was seen to make (counts add up over edges).
        self.deltas: dict[tuple[str, str, bool, str, bool], int] = {}

    def run(self, max_evaluations: int) -> Genotype | None:
        self.budget = max_evaluations
        while self.evaluations < self.budget:
            current = random_genotype(self.rng, self.ops, self.num_nodes)
            n = self._evaluate(current)
            while n is not None and not self._in_band(n):
                current, n = self._improve(current, n)
            if n is not None:
                return current
        return None

    def _improve(self, current: Genotype, n: int) -> tuple[Genotype, int | None]:
        """The first move, in random order, that gets the count closer to the target.

        ``None`` for the count when there is none (a local optimum) or the budget is spent: the
        walk ends there. Moves whose change of count is already known not to get closer are
        skipped unbuilt: this saves most of the networks near the extremes of the range and does
        not change which move is taken.
        """
        moves = self._moves(current)
        self.rng.shuffle(moves)
        for move in moves:
            kind = self._kind(current, move)
            if kind in self.deltas and not self._closer(n + self.deltas[kind], n):
                continue
            proposal = self._apply(current, move)
            m = self._evaluate(proposal)
            if m is None:
                break
            self.deltas[kind] = m - n
            if self._closer(m, n):
                return proposal, m
        return current, None

    def _closer(self, m: int, n: int) -> bool:
        return abs(m - self.target) < abs(n - self.target)

    @staticmethod
    def _kind(genotype: Genotype, move: Move) -> tuple[str, str, bool, str, bool]:
        """What a move changes in the count: the cell type, and the op and stride before/after.

        An edge's parameters depend on its op and on whether it has stride 2 (a reduction
        cell's edge from node 0 or 1), not on anything else.
        """
        cell_type, k, (op, node) = move
        old_op, old_node = genotype.cell(cell_type)[k]
        reduce = cell_type == "reduce"
        return cell_type, old_op, reduce and old_node < 2, op, reduce and node < 2

    def _evaluate(self, genotype: Genotype) -> int | None:
        """The count, as one evaluation of the budget; ``None`` once the budget is spent."""
        if self.evaluations >= self.budget:
            return None
        self.evaluations += 1
        n = self.memo(genotype)
        if self.evaluations == 1 or abs(n - self.target) < abs(self.closest - self.target):
            self.closest = n
        return n

    def _in_band(self, n: int) -> bool:
        return self.band[0] <= n <= self.band[1]

    def _moves(self, genotype: Genotype) -> list[Move]:
        """Every re-draw of one edge's (op, input node) that changes the genotype."""
        return [
            (t, k, choice)
            for t in CELL_TYPES
            for k in range(len(genotype.cell(t)))
            for choice in self._choices(genotype.cell(t), k)
        ]

    def _apply(self, genotype: Genotype, move: Move) -> Genotype:
        cell_type, k, choice = move
        cells = {t: list(genotype.cell(t)) for t in CELL_TYPES}
        edges = cells[cell_type]
        edges[k] = choice
        first = k - k % EDGES_PER_NODE
        edges[first : first + EDGES_PER_NODE] = sorted(
            edges[first : first + EDGES_PER_NODE], key=lambda e: e[1]
        )
        return _genotype(tuple(cells["normal"]), tuple(cells["reduce"]), self.num_nodes)

    def _choices(self, edges: Cell, k: int) -> list[Edge]:
        other = edges[k ^ 1][1]  # the input of the node's other edge
        node = 2 + k // EDGES_PER_NODE
        return [
            (op, i) for op in self.ops for i in range(node) if i != other and (op, i) != edges[k]
        ]


def _unreachable(target: int, tolerance: float, reachable: ParameterRange) -> str:
    return (
        f"target_params={target:,} (±{tolerance:.1%}) is outside what the search space builds "
        f"at this width and depth: {reachable.smallest:,} to {reachable.largest:,} parameters "
        f"(closest: {reachable.closest(target):,}); raise tolerance, or change the retraining "
        "width/depth (init_channels, num_cells) so that the range covers the target"
    )


def _exhausted(target: int, tolerance: float, evaluations: int, closest: int) -> str:
    rel = f" ({(closest - target) / target:+.1%})"
    return (
        f"no random architecture within ±{tolerance:.1%} of target_params={target:,} after "
        f"{evaluations} genotypes; the closest had {closest:,}{rel} parameters; raise tolerance "
        "or max_evaluations, or change the retraining width/depth (init_channels, num_cells)"
    )
