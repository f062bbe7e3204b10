"""Cells published by DARTS-family papers, written as genotypes.

They serve as baselines and as a check of the evaluation network: built with
:class:`~hyperdarts.search_space.evaluation.EvalNetwork` at C=36, L=20 for CIFAR-10, each must
have the parameter count (auxiliary head excluded) that its paper reports. The genotypes are those
the authors released with their code; the counts in :data:`REPORTED_PARAMS_M` are the papers'.
"""

from __future__ import annotations

from hyperdarts.search_space.genotypes import Genotype

ALL_NODES = (2, 3, 4, 5)
Edge = tuple[str, int]


def _cell(*nodes: tuple[Edge, Edge]) -> tuple[Edge, ...]:
    """Write a cell one line per intermediate node: its two (op, input node) edges."""
    return tuple(edge for node in nodes for edge in node)


# DARTS, first-order search (Liu et al., ICLR 2019, arXiv:1806.09055). Table 1 reports 3.3M for
# DARTS; the released first-order cell builds to 3,169,414 (3.2M) in the DARTS network.
DARTS_V1 = Genotype(
    normal=_cell(
        (("sep_conv_3x3", 1), ("sep_conv_3x3", 0)),
        (("skip_connect", 0), ("sep_conv_3x3", 1)),
        (("skip_connect", 0), ("sep_conv_3x3", 1)),
        (("sep_conv_3x3", 0), ("skip_connect", 2)),
    ),
    normal_concat=ALL_NODES,
    reduce=_cell(
        (("max_pool_3x3", 0), ("max_pool_3x3", 1)),
        (("skip_connect", 2), ("max_pool_3x3", 0)),
        (("max_pool_3x3", 0), ("skip_connect", 2)),
        (("skip_connect", 2), ("avg_pool_3x3", 0)),
    ),
    reduce_concat=ALL_NODES,
)

# DARTS, second-order search (arXiv:1806.09055), the cell of the paper's Figures 4-5: 3.3M
# (the DARTS code logs "param size = 3.349342MB" for it).
DARTS_V2 = Genotype(
    normal=_cell(
        (("sep_conv_3x3", 0), ("sep_conv_3x3", 1)),
        (("sep_conv_3x3", 0), ("sep_conv_3x3", 1)),
        (("sep_conv_3x3", 1), ("skip_connect", 0)),
        (("skip_connect", 0), ("dil_conv_3x3", 2)),
    ),
    normal_concat=ALL_NODES,
    reduce=_cell(
        (("max_pool_3x3", 0), ("max_pool_3x3", 1)),
        (("skip_connect", 2), ("max_pool_3x3", 1)),
        (("max_pool_3x3", 0), ("skip_connect", 2)),
        (("skip_connect", 2), ("max_pool_3x3", 1)),
    ),
    reduce_concat=ALL_NODES,
)

# PC-DARTS, CIFAR-10 search (Xu et al., ICLR 2020, arXiv:1907.05737): 3.6M.
PC_DARTS = Genotype(
    normal=_cell(
        (("sep_conv_3x3", 1), ("skip_connect", 0)),
        (("sep_conv_3x3", 0), ("dil_conv_3x3", 1)),
        (("sep_conv_5x5", 0), ("sep_conv_3x3", 1)),
        (("avg_pool_3x3", 0), ("dil_conv_3x3", 1)),
    ),
    normal_concat=ALL_NODES,
    reduce=_cell(
        (("sep_conv_5x5", 1), ("max_pool_3x3", 0)),
        (("sep_conv_5x5", 1), ("sep_conv_5x5", 2)),
        (("sep_conv_3x3", 0), ("sep_conv_3x3", 3)),
        (("sep_conv_3x3", 1), ("sep_conv_3x3", 2)),
    ),
    reduce_concat=ALL_NODES,
)

# P-DARTS, CIFAR-10 search (Chen et al., ICCV 2019, arXiv:1904.12760): 3.4M (3,433,798).
PDARTS = Genotype(
    normal=_cell(
        (("skip_connect", 0), ("dil_conv_3x3", 1)),
        (("skip_connect", 0), ("sep_conv_3x3", 1)),
        (("sep_conv_3x3", 1), ("sep_conv_3x3", 3)),
        (("sep_conv_3x3", 0), ("dil_conv_5x5", 4)),
    ),
    normal_concat=ALL_NODES,
    reduce=_cell(
        (("avg_pool_3x3", 0), ("sep_conv_5x5", 1)),
        (("sep_conv_3x3", 0), ("dil_conv_5x5", 2)),
        (("max_pool_3x3", 0), ("dil_conv_3x3", 1)),
        (("dil_conv_3x3", 1), ("dil_conv_5x5", 3)),
    ),
    reduce_concat=ALL_NODES,
)

# DrNAS, CIFAR-10 search in the DARTS space (Chen et al., ICLR 2021, arXiv:2006.10355): 4.1M.
DRNAS = Genotype(
    normal=_cell(
        (("sep_conv_3x3", 0), ("sep_conv_5x5", 1)),
        (("sep_conv_3x3", 1), ("sep_conv_3x3", 2)),
        (("skip_connect", 0), ("sep_conv_3x3", 1)),
        (("sep_conv_3x3", 2), ("dil_conv_5x5", 3)),
    ),
    normal_concat=ALL_NODES,
    reduce=_cell(
        (("max_pool_3x3", 0), ("sep_conv_5x5", 1)),
        (("dil_conv_5x5", 2), ("sep_conv_5x5", 1)),
        (("sep_conv_5x5", 1), ("dil_conv_5x5", 3)),
        (("skip_connect", 4), ("sep_conv_5x5", 1)),
    ),
    reduce_concat=ALL_NODES,
)

PUBLISHED: dict[str, Genotype] = {
    "DARTS_V1": DARTS_V1,
    "DARTS_V2": DARTS_V2,
    "PC_DARTS": PC_DARTS,
    "PDARTS": PDARTS,
    "DRNAS": DRNAS,
}

# Parameters (millions, auxiliary head excluded) each paper reports at C=36, L=20 on CIFAR-10.
REPORTED_PARAMS_M: dict[str, float] = {
    "DARTS_V1": 3.3,
    "DARTS_V2": 3.3,
    "PC_DARTS": 3.6,
    "PDARTS": 3.4,
    "DRNAS": 4.1,
}


def published_genotype(name: str) -> Genotype:
    """Look a published cell up by name (case-insensitive), naming the known cells on a miss."""
    key = name.upper().replace("-", "_")
    if key not in PUBLISHED:
        raise KeyError(f"unknown published cell {name!r}; known cells: {', '.join(PUBLISHED)}")
    return PUBLISHED[key]
