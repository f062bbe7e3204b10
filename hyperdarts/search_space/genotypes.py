"""Genotypes: the discrete architecture a relaxed one stands for, and their JSON form.

A genotype lists, for the normal and the reduce cell, two (op, input node) pairs per intermediate
node, in node order, plus the nodes concatenated into the cell output. Input nodes 0 and 1 are the
two previous cells; node k >= 2 is intermediate node k - 2. This is the representation DARTS and
its successors publish, so published cells can be written down and compared directly.

JSON format, version 1::

    {"format": "hyperdarts.genotype", "version": 1,
     "normal": [["sep_conv_3x3", 0], ...], "normal_concat": [2, 3, 4, 5],
     "reduce": [["max_pool_3x3", 0], ...], "reduce_concat": [2, 3, 4, 5]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hyperdarts.errors import HyperDARTSError
from hyperdarts.io import atomic_write_text, read_json
from hyperdarts.search_space.cells import edge_inputs
from hyperdarts.search_space.ops import OPS

FORMAT = "hyperdarts.genotype"
VERSION = 1
EDGES_PER_NODE = 2


class GenotypeError(HyperDARTSError, ValueError):
    """A genotype (or genotype file) that cannot describe a DARTS cell."""


@dataclass(frozen=True)
class Genotype:
    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]
    num_nodes: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "normal", tuple((str(o), int(i)) for o, i in self.normal))
        object.__setattr__(self, "reduce", tuple((str(o), int(i)) for o, i in self.reduce))
        object.__setattr__(self, "normal_concat", tuple(int(i) for i in self.normal_concat))
        object.__setattr__(self, "reduce_concat", tuple(int(i) for i in self.reduce_concat))
        object.__setattr__(self, "num_nodes", len(self.normal) // EDGES_PER_NODE)
        validate(self)

    def cell(self, cell_type: str) -> tuple[tuple[str, int], ...]:
        return self.normal if cell_type == "normal" else self.reduce

    def concat(self, cell_type: str) -> tuple[int, ...]:
        return self.normal_concat if cell_type == "normal" else self.reduce_concat

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "normal": [list(e) for e in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [list(e) for e in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "genotype") -> Genotype:
        if not isinstance(data, dict):
            raise GenotypeError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format", FORMAT) != FORMAT:
            raise GenotypeError(
                f"{source}: 'format' is {data.get('format')!r}, expected {FORMAT!r}"
            )
        if data.get("version", VERSION) != VERSION:
            raise GenotypeError(
                f"{source}: 'version' is {data.get('version')!r}; this hyperdarts reads version "
                f"{VERSION}"
            )
        missing = [
            k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in data
        ]
        if missing:
            raise GenotypeError(f"{source}: missing field(s) {missing}")
        try:
            return cls(
                normal=[_edge(e, f"{source}: normal") for e in data["normal"]],
                normal_concat=_nodes(data["normal_concat"], f"{source}: normal_concat"),
                reduce=[_edge(e, f"{source}: reduce") for e in data["reduce"]],
                reduce_concat=_nodes(data["reduce_concat"], f"{source}: reduce_concat"),
            )
        except GenotypeError as err:
            raise GenotypeError(
                str(err) if str(err).startswith(source) else f"{source}: {err}"
            ) from None
        except TypeError as err:
            raise GenotypeError(f"{source}: malformed genotype ({err})") from None


def _edge(entry: Any, where: str) -> tuple[str, int]:
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        raise GenotypeError(f"{where}: each edge must be [op_name, input_node], got {entry!r}")
    op, node = entry
    if not isinstance(op, str) or isinstance(node, bool) or not isinstance(node, int):
        raise GenotypeError(f"{where}: each edge must be [op_name, input_node], got {entry!r}")
    return op, node


def _nodes(entry: Any, where: str) -> list[int]:
    if not isinstance(entry, list) or any(
        isinstance(n, bool) or not isinstance(n, int) for n in entry
    ):
        raise GenotypeError(f"{where}: expected a list of node indices, got {entry!r:.80}")
    return entry


def validate(genotype: Genotype) -> None:
    """Say exactly what is wrong: op names, edge counts, input nodes, concat nodes."""
    if len(genotype.normal) != len(genotype.reduce):
        raise GenotypeError(
            f"normal has {len(genotype.normal)} edges but reduce has {len(genotype.reduce)}; "
            "both cells need the same number of nodes"
        )
    for cell_type in ("normal", "reduce"):
        edges = genotype.cell(cell_type)
        if not edges or len(edges) % EDGES_PER_NODE:
            raise GenotypeError(
                f"{cell_type}: needs {EDGES_PER_NODE} edges per intermediate node, got {len(edges)}"
            )
        for k, (op, node) in enumerate(edges):
            if op not in OPS or op == "none":
                raise GenotypeError(
                    f"{cell_type}[{k}]: unknown operation {op!r}; choose from "
                    f"{', '.join(o for o in OPS if o != 'none')}"
                )
            target = 2 + k // EDGES_PER_NODE
            if not 0 <= node < target:
                raise GenotypeError(
                    f"{cell_type}[{k}]: input node {node} is invalid for node {target}; "
                    f"it must be in 0..{target - 1}"
                )
        concat = genotype.concat(cell_type)
        last = 2 + len(edges) // EDGES_PER_NODE
        bad = [n for n in concat if not 0 <= n < last]
        if not concat or bad or len(set(concat)) != len(concat):
            raise GenotypeError(
                f"{cell_type}_concat: {list(concat)} must list distinct nodes in 0..{last - 1}"
            )


def derive(
    probs: torch.Tensor, primitives: tuple[str, ...], num_nodes: int
) -> list[tuple[str, int]]:
    """DARTS rule: per edge its strongest op other than none; per node its two strongest edges.

    Ties go to the earlier op in ``primitives`` and the earlier input node, so the result is
    deterministic.
    """
    keep = [k for k, name in enumerate(primitives) if name != "none"]
    probs = probs.detach().double().cpu()
    cell: list[tuple[str, int]] = []
    start = 0
    for j in range(num_nodes):
        n_in = j + 2
        block = probs[start : start + n_in][:, keep]
        best_val, best_op = _first_max(block)
        order = sorted(range(n_in), key=lambda i: (-best_val[i], i))[:EDGES_PER_NODE]
        for i in sorted(order):
            cell.append((primitives[keep[best_op[i]]], i))
        start += n_in
    return cell


def _first_max(block: torch.Tensor) -> tuple[list[float], list[int]]:
    values, index = [], []
    for row in block.tolist():
        m = max(row)
        values.append(m)
        index.append(row.index(m))
    return values, index


def derive_genotype(
    probs: dict[str, torch.Tensor], primitives: tuple[str, ...], num_nodes: int
) -> Genotype:
    concat = tuple(range(2, 2 + num_nodes))
    return Genotype(
        normal=derive(probs["normal"], primitives, num_nodes),
        normal_concat=concat,
        reduce=derive(probs["reduce"], primitives, num_nodes),
        reduce_concat=concat,
    )


def one_hot(
    genotype: Genotype, primitives: tuple[str, ...], num_nodes: int
) -> dict[str, torch.Tensor]:
    """Mixing weights that select exactly the genotype's edges (zero elsewhere)."""
    if genotype.num_nodes != num_nodes:
        raise GenotypeError(
            f"genotype has {genotype.num_nodes} nodes per cell, the search space {num_nodes}"
        )
    index = {pair: e for e, pair in enumerate(edge_inputs(num_nodes))}
    out = {}
    for cell_type in ("normal", "reduce"):
        w = torch.zeros(len(index), len(primitives))
        for k, (op, src) in enumerate(genotype.cell(cell_type)):
            if op not in primitives:
                raise GenotypeError(f"{cell_type}[{k}]: {op!r} is not in this search space")
            w[index[(src, 2 + k // EDGES_PER_NODE)], primitives.index(op)] = 1.0
        out[cell_type] = w
    return out


def save_genotype(genotype: Genotype, path: str | Path) -> Path:
    return atomic_write_text(path, json.dumps(genotype.to_dict(), indent=2) + "\n")


def load_genotype(path: str | Path) -> Genotype:
    path = Path(path)
    data = read_json(path, GenotypeError, "genotype file")
    return Genotype.from_dict(data, source=str(path))
