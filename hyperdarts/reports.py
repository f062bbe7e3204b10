"""What a family leaves in the run directory: files, the trade-off plot, cell drawings, a table.

Figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot: no global figure
state and no GUI backend, so they work headless, in a callback and in tests alike.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from hyperdarts.family import FamilyMember, save_family, save_family_csv
from hyperdarts.io import atomic_write_bytes
from hyperdarts.search_space.genotypes import Genotype
from hyperdarts.search_space.networks import CELL_TYPES

DPI = 120
INPUT_COLOR, NODE_COLOR, OUTPUT_COLOR = "#a6cee3", "#ffffb3", "#b2df8a"
BENDS = (0.0, 0.15, -0.15, 0.3, -0.3, 0.45, -0.45)  # arcs tried for edges that skip layers
CLEAR = 0.3  # distance (in layer units) from a node's centre that an edge should keep


@dataclass(frozen=True)
class FamilyFiles:
    json: Path
    csv: Path
    plot: Path
    cells: tuple[Path, ...]


def describe_files(files: FamilyFiles) -> str:
    """The written paths, for the terminal (the cell drawings by their folder)."""
    lines = [f"  {path.resolve()}" for path in (files.json, files.csv, files.plot)]
    if files.cells:
        lines.append(f"  {files.cells[0].parent.resolve()}/ ({len(files.cells)} cell drawings)")
    return "\n".join(lines)


def write_family_report(
    members: Sequence[FamilyMember], directory: str | Path, meta: dict[str, Any]
) -> FamilyFiles:
    """family.json, family.csv, family.png and cells/cell_<i>_{normal,reduce}.png in ``directory``.

    ``i`` is the member's index in ``members`` (and in family.json), so a drawing can be matched
    to its row.
    """
    directory = Path(directory)
    return FamilyFiles(
        json=save_family(members, directory / "family.json", meta),
        csv=save_family_csv(members, directory / "family.csv"),
        plot=plot_family(members, directory / "family.png"),
        cells=tuple(plot_family_cells(members, directory / "cells")),
    )


def plot_family(members: Sequence[FamilyMember], path: str | Path) -> Path:
    """Parameters vs one-shot accuracy, each point labelled with its λ; without accuracies,
    λ vs parameters (the shape of the trade-off the hypernetwork learned)."""
    if not members:
        raise ValueError("plot_family: the family is empty")
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    ordered = sorted(members, key=lambda m: m.params)
    if all(m.one_shot_accuracy is not None for m in members):
        xs = [m.params for m in ordered]
        ys = [m.one_shot_accuracy for m in ordered]
        ax.set_xlabel("parameters (evaluation network)")
        ax.set_ylabel("one-shot accuracy")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)))
    else:
        ordered = sorted(members, key=lambda m: m.lam)
        xs = [m.lam for m in ordered]
        ys = [m.params for m in ordered]
        ax.set_xscale("log")
        ax.set_xlabel("λ (complexity weight)")
        ax.set_ylabel("parameters (evaluation network)")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)))
    ax.plot(xs, ys, "o-", color="tab:blue")
    for m, x, y in zip(ordered, xs, ys):
        ax.annotate(f"λ={m.lam:.3g}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_title(f"Architecture family ({len(members)} architectures)")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_family_cells(members: Sequence[FamilyMember], directory: str | Path) -> list[Path]:
    """cell_<i>_{normal,reduce}.png per member; drawings left by an earlier, larger family in the
    same directory are removed, so that the folder always matches family.json."""
    directory = Path(directory)
    written = [
        plot_cell(m.genotype, cell_type, directory / f"cell_{i}_{cell_type}.png")
        for i, m in enumerate(members)
        for cell_type in CELL_TYPES
    ]
    for stale in set(directory.glob("cell_*_*.png")) - set(written):
        stale.unlink()
    return written


def cell_graph(genotype: Genotype, cell_type: str) -> nx.DiGraph:
    """The cell as a DAG: inputs c_{k-2}, c_{k-1}, nodes 0..N-1, output c_{k}; ops on the edges.

    Each node carries its ``layer`` (longest path from the inputs), for a left-to-right layout.
    """
    names = ["c_{k-2}", "c_{k-1}", *(str(j) for j in range(genotype.num_nodes)), "c_{k}"]
    graph = nx.DiGraph()
    graph.add_nodes_from(names[:2], layer=0)
    for k, (op, src) in enumerate(genotype.cell(cell_type)):
        u, v = names[src], names[2 + k // 2]
        if v not in graph:
            graph.add_node(v, layer=0)
        if graph.has_edge(u, v):  # two ops on the same input: one arrow, both names
            graph.edges[u, v]["op"] += f"\n{op}"
        else:
            graph.add_edge(u, v, op=op)
        graph.nodes[v]["layer"] = max(graph.nodes[v]["layer"], graph.nodes[u]["layer"] + 1)
    output = names[-1]
    graph.add_node(output, layer=1 + max(layer for _, layer in graph.nodes(data="layer")))
    for node in genotype.concat(cell_type):
        graph.add_edge(names[node], output, op="")
    return graph


def plot_cell(genotype: Genotype, cell_type: str, path: str | Path) -> Path:
    if cell_type not in CELL_TYPES:
        raise ValueError(f"cell_type={cell_type!r}: choose one of {', '.join(CELL_TYPES)}")
    graph = cell_graph(genotype, cell_type)
    pos = layered_layout(graph)
    # One size per search space (the longest chain has num_nodes + 2 layers), not per cell: W&B
    # shows images of one key as a gallery only when their sizes match.
    fig = Figure(figsize=(1.7 * (genotype.num_nodes + 2) + 1, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    colors = [_color(graph, n) for n in graph]
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_color=colors, node_size=900, edgecolors="k")
    nx.draw_networkx_labels(graph, pos, {n: _label(n) for n in graph}, ax=ax, font_size=10)
    for edges, style, line, label_pos in _edge_groups(graph, pos):
        nx.draw_networkx_edges(
            graph,
            pos,
            edges,
            ax=ax,
            node_size=900,
            arrowsize=12,
            edge_color="0.35",
            style=line,
            connectionstyle=style,
        )
        nx.draw_networkx_edge_labels(
            graph,
            pos,
            {e: graph.edges[e]["op"] for e in edges},
            ax=ax,
            font_size=7,
            label_pos=label_pos,
            connectionstyle=style,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
        )
    ax.set_title(f"{cell_type} cell")
    ax.margins(0.12)
    return save_figure(fig, path, tight=False)


def layered_layout(graph: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """x = layer; nodes of a layer spread over y ∈ [-1, 1]. A node alone in its layer sits above
    or below the middle, alternately, so that edges skipping it do not run through it."""
    by_layer: dict[int, list[str]] = {}
    for node, layer in graph.nodes(data="layer"):
        by_layer.setdefault(layer, []).append(node)
    pos = {}
    for layer, nodes in by_layer.items():
        if len(nodes) == 1 and 0 < layer < max(by_layer):
            ys = [0.5 if layer % 2 else -0.5]
        elif len(nodes) == 1:
            ys = [0.0]
        else:
            ys = [1 - 2 * k / (len(nodes) - 1) for k in range(len(nodes))]
        pos.update({n: (float(layer), y) for n, y in zip(nodes, ys)})
    return pos


def _edge_groups(
    graph: nx.DiGraph, pos: dict[str, tuple[float, float]]
) -> list[tuple[list[tuple[str, str]], str, str, float]]:
    """(edges, connection style, line style, label position) per kind of edge.

    Ops are solid, labelled nearer the target (edges fan out from the inputs: labels there would
    collide); the concatenation into the output is dashed. Edges that skip layers bend around
    the nodes in between and are labelled midway.
    """
    groups: dict[tuple[str, str, float], list[tuple[str, str]]] = {}
    for u, v, op in graph.edges(data="op"):
        skips = graph.nodes[v]["layer"] - graph.nodes[u]["layer"] > 1
        rad = _bend(graph, pos, u, v) if skips else 0.05
        key = ("solid" if op else "dashed", f"arc3,rad={rad}", 0.65 if op and not skips else 0.5)
        groups.setdefault(key, []).append((u, v))
    return [(edges, style, line, at) for (line, style, at), edges in groups.items()]


def _bend(graph: nx.DiGraph, pos: dict[str, tuple[float, float]], u: str, v: str) -> float:
    """The least arc (matplotlib arc3 rad) that keeps the edge clear of the skipped nodes."""
    low, high = graph.nodes[u]["layer"], graph.nodes[v]["layer"]
    skipped = [pos[n] for n, layer in graph.nodes(data="layer") if low < layer < high]

    def score(rad: float) -> tuple[float, float]:
        clearance = min(math.dist(p, q) for p in _arc(pos[u], pos[v], rad) for q in skipped)
        return min(clearance, CLEAR), -abs(rad)

    return max(BENDS, key=score)


def _arc(
    start: tuple[float, float], end: tuple[float, float], rad: float
) -> list[tuple[float, float]]:
    """Points of matplotlib's arc3 curve: a quadratic Bézier through a control point offset
    ``rad`` × the chord length, perpendicular to the chord."""
    (x1, y1), (x2, y2) = start, end
    cx, cy = (x1 + x2) / 2 + rad * (y2 - y1), (y1 + y2) / 2 - rad * (x2 - x1)
    ts = [k / 10 for k in range(1, 10)]
    return [
        (
            (1 - t) ** 2 * x1 + 2 * t * (1 - t) * cx + t**2 * x2,
            (1 - t) ** 2 * y1 + 2 * t * (1 - t) * cy + t**2 * y2,
        )
        for t in ts
    ]


def _color(graph: nx.DiGraph, node: str) -> str:
    if graph.in_degree(node) == 0:
        return INPUT_COLOR
    return OUTPUT_COLOR if graph.out_degree(node) == 0 else NODE_COLOR


def _label(node: str) -> str:
    return f"${node}$" if node.startswith("c_") else node


def save_figure(fig: Figure, path: str | Path, tight: bool = True) -> Path:
    """Render ``fig`` in memory and write it atomically: an interrupted write keeps the old file."""
    buffer = io.BytesIO()
    fig.savefig(
        buffer,
        format=Path(path).suffix.lstrip(".") or "png",
        dpi=DPI,
        bbox_inches="tight" if tight else None,
        facecolor="white",
    )
    return atomic_write_bytes(path, buffer.getvalue())


def format_family_table(members: Sequence[FamilyMember]) -> str:
    """A fixed-width table for the terminal, one row per member."""
    header = ("#", "λ", "#λ", "params", "FLOPs", "C (one-hot)", "one-shot acc")
    rows = [
        (
            str(i),
            f"{m.lam:.4g}",
            str(len(m.lambdas)),
            f"{m.params:,}",
            si(m.flops),
            f"{m.expected_complexity:.3f}",
            "-" if m.one_shot_accuracy is None else f"{m.one_shot_accuracy:.4f}",
        )
        for i, m in enumerate(members)
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in [header, *rows])


def si(value: float) -> str:
    """1234567 → 1.23M: counts at a glance."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"
