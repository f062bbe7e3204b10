"""The architecture family of a trained search, and the largest architecture within a budget.

A trained hypernetwork gives an architecture for every λ. Deriving it over a grid of λ and merging
equal genotypes gives the family. Each member is costed exactly (parameters and FLOPs of the
evaluation network at the retraining width and depth), because the relaxed expected complexity the
search optimizes is only a proxy for what retraining will build. A parameter budget is answered from
the same hypernetwork by searching over λ: no new search.

family.json, version 1::

    {"format": "hyperdarts.family", "version": 1,
     "meta": {"search_space": {...}, "lambda_range": [0.001, 1.0], "spec": {...},
              "checkpoint": "runs/.../last.ckpt" or null},
     "members": [{"lambda": 0.001, "lambdas": [0.001, 0.0024], "params": 2395054,
                  "flops": 737273088, "expected_complexity": 0.81, "one_shot_accuracy": 0.93,
                  "genotype": {... Genotype.to_dict() ...}}, ...]}

Members are sorted by parameter count, largest first (ties: smaller λ first); ``lambda`` is the
smallest of ``lambdas``, the λ values of the grid that gave the member's genotype.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hyperdarts.complexity import count_flops
from hyperdarts.errors import HyperDARTSError
from hyperdarts.io import atomic_write_text, read_json
from hyperdarts.search_space.evaluation import EvalNetwork, count_eval_parameters
from hyperdarts.search_space.genotypes import Genotype, GenotypeError, one_hot
from hyperdarts.search_space.networks import CELL_TYPES

if TYPE_CHECKING:
    from hyperdarts.modules.search import HyperDARTSSearch

FORMAT = "hyperdarts.family"
VERSION = 1
MEMBER_FIELDS = (
    "lambda",
    "lambdas",
    "params",
    "flops",
    "expected_complexity",
    "one_shot_accuracy",
    "genotype",
)
CSV_COLUMNS = MEMBER_FIELDS  # the same fields; the genotype as a compact string
BUDGET_FORMS = (
    "a positive number of parameters with an optional suffix k (thousand), M (million) or G/B "
    "(billion), e.g. 800k, 1.5M, 2000, 1e6"
)
MAX_BUDGET = 10**15
_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}
_BUDGET = re.compile(r"\s*((?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*([kmgb]?)\s*", re.I)


class FamilyError(HyperDARTSError, ValueError):
    """A family file that cannot be read; the message names the file and the field."""


class BudgetError(HyperDARTSError, ValueError):
    """A budget that is unparseable, or that no architecture of the family fits."""


@dataclass(frozen=True, kw_only=True)
class EvalSpec:
    """The retraining network at which architectures are costed (DARTS: 36 channels, 20 cells)."""

    num_channels: int
    num_classes: int
    image_size: int
    init_channels: int = 36
    num_cells: int = 20
    stem_multiplier: int = 3

    @classmethod
    def for_module(
        cls, module: HyperDARTSSearch, init_channels: int = 36, num_cells: int = 20
    ) -> EvalSpec:
        """The data shape and stem of the search, at the retraining width and depth."""
        hp = module.hparams
        return cls(
            num_channels=hp.num_channels,
            num_classes=hp.num_classes,
            image_size=hp.image_size,
            init_channels=init_channels,
            num_cells=num_cells,
            stem_multiplier=hp.stem_multiplier,
        )

    def build(self, genotype: Genotype, auxiliary: bool = False) -> EvalNetwork:
        """The evaluation network; without the auxiliary head by default: it is not counted, so
        building it for costing would only cost time."""
        return EvalNetwork(
            genotype,
            self.num_channels,
            self.num_classes,
            self.image_size,
            self.init_channels,
            self.num_cells,
            self.stem_multiplier,
            auxiliary=auxiliary,
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.num_channels, self.image_size, self.image_size)


@dataclass
class FamilyMember:
    """One distinct architecture of the family and every grid λ that derives it."""

    lambdas: list[float]
    genotype: Genotype
    params: int
    flops: int
    expected_complexity: float
    one_shot_accuracy: float | None = None

    @property
    def lam(self) -> float:
        """The representative λ: the smallest that gives this genotype."""
        return min(self.lambdas)


class Costs:
    """Exact parameters and FLOPs per genotype, each computed once (FLOPs only when asked)."""

    def __init__(self, spec: EvalSpec) -> None:
        self.spec = spec
        self._params: dict[Genotype, int] = {}
        self._flops: dict[Genotype, int] = {}

    def params(self, genotype: Genotype) -> int:
        if genotype not in self._params:
            self._params[genotype] = count_eval_parameters(self.spec.build(genotype))
        return self._params[genotype]

    def flops(self, genotype: Genotype) -> int:
        if genotype not in self._flops:
            self._flops[genotype] = count_flops(self.spec.build(genotype), self.spec.input_shape)
        return self._flops[genotype]


# --- the family over a grid of λ ------------------------------------------------------------------


def derive_family(
    module: HyperDARTSSearch,
    lambdas: Sequence[float],
    spec: EvalSpec,
    loader: Iterable | None = None,
    max_batches: int | None = None,
) -> list[FamilyMember]:
    """Genotypes at each λ, merged when equal, costed at ``spec``; largest first.

    With a ``loader`` each member also gets its one-shot accuracy (on at most ``max_batches``).
    """
    if not lambdas:
        raise ValueError("derive_family: no λ values given")
    groups = _group((lam, module.genotype(lam)) for lam in lambdas)
    costs = Costs(spec)
    members = [_member(module, g, lams, costs) for g, lams in groups.items()]
    if loader is not None:
        for m in members:
            m.one_shot_accuracy = one_shot_accuracy(module, m.genotype, loader, max_batches)
    return sorted(members, key=lambda m: (-m.params, m.lam))


def _group(points: Iterable[tuple[float, Genotype]]) -> dict[Genotype, list[float]]:
    groups: dict[Genotype, list[float]] = {}
    for lam, genotype in points:
        groups.setdefault(genotype, []).append(lam)
    return {g: sorted(lams) for g, lams in groups.items()}


def _member(
    module: HyperDARTSSearch, genotype: Genotype, lambdas: list[float], costs: Costs
) -> FamilyMember:
    return FamilyMember(
        lambdas=lambdas,
        genotype=genotype,
        params=costs.params(genotype),
        flops=costs.flops(genotype),
        expected_complexity=module.genotype_complexity(genotype),
    )


@torch.no_grad()
def one_shot_accuracy(
    module: HyperDARTSSearch,
    genotype: Genotype,
    loader: Iterable,
    max_batches: int | None = None,
) -> float:
    """Accuracy of the supernet restricted to the genotype's ops (one-hot mixing weights).

    It ranks members without retraining; the weights are shared by all architectures, so it is a
    proxy, not the accuracy the retrained network will reach.
    """
    reference = next(module.net.parameters())
    weights = {
        k: v.to(reference.device, reference.dtype)
        for k, v in one_hot(genotype, module.primitives, module.hparams.num_nodes).items()
    }
    was_training = module.net.training
    module.net.eval()
    correct = total = 0
    try:
        for x, y in itertools.islice(loader, max_batches):
            x = x.to(reference.device, reference.dtype)
            y = y.to(reference.device)
            correct += int((module.net(x, weights).argmax(dim=1) == y).sum())
            total += y.numel()
    finally:
        module.net.train(was_training)
    if total == 0:
        raise ValueError("one-shot accuracy: the loader yielded no examples")
    return correct / total


# --- the largest architecture within a budget -----------------------------------------------------


def query_budget(
    module: HyperDARTSSearch, budget: int, spec: EvalSpec, num: int = 200, refine_steps: int = 4
) -> FamilyMember:
    """The architecture with the most parameters ≤ ``budget`` that the hypernetwork derives.

    Scans ``num`` log-spaced λ over the searched range, then bisects (``refine_steps`` deep, in
    log λ) between neighbours whose genotypes differ, to catch architectures that live only on a
    narrow λ interval. Ties in parameters go to the smaller λ. The member's ``lambdas`` are all
    scanned λ that give its genotype.
    """
    if budget < 1:
        raise BudgetError(f"budget {budget}: must be at least 1 parameter")
    if num < 2:
        raise ValueError(f"num={num}: the λ scan needs at least 2 points")
    groups = _group(_scan(module, module.sampler.grid(num), refine_steps))
    costs = Costs(spec)
    fitting = [g for g in groups if costs.params(g) <= budget]
    if not fitting:
        smallest = min(groups, key=lambda g: (costs.params(g), groups[g][0]))
        raise BudgetError(
            f"budget {budget:,} parameters is below the smallest architecture of the family: "
            f"{costs.params(smallest):,} parameters (λ={groups[smallest][0]:.4g}, at "
            f"{spec.init_channels} channels and {spec.num_cells} cells); raise the budget or "
            "count at a smaller width/depth (eval_init_channels, eval_num_cells)"
        )
    best = max(fitting, key=lambda g: (costs.params(g), -groups[g][0]))
    return _member(module, best, groups[best], costs)


def _scan(
    module: HyperDARTSSearch, lambdas: list[float], refine_steps: int
) -> list[tuple[float, Genotype]]:
    points = [(lam, module.genotype(lam)) for lam in lambdas]
    scanned = points[:1]
    for a, b in itertools.pairwise(points):
        scanned += _between(module, a, b, refine_steps) + [b]
    return scanned


def _between(
    module: HyperDARTSSearch,
    a: tuple[float, Genotype],
    b: tuple[float, Genotype],
    depth: int,
) -> list[tuple[float, Genotype]]:
    """Bisect in log λ while the ends differ: the genotypes strictly between a and b."""
    if depth <= 0 or a[1] == b[1]:
        return []
    lam = math.sqrt(a[0] * b[0])
    mid = (lam, module.genotype(lam))
    return _between(module, a, mid, depth - 1) + [mid] + _between(module, mid, b, depth - 1)


def parse_budget(text: str | int) -> int:
    """Parse "1.5M" → 1_500_000; fractions of a parameter are dropped (a budget is a maximum)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = Decimal(text)
    else:
        match = _BUDGET.fullmatch(str(text))
        if match is None:
            raise BudgetError(f"budget {text!r}: expected {BUDGET_FORMS}")
        value = Decimal(match[1].replace("_", ""))
        # Bounded before scaling and int(): "1e999999999" would otherwise take forever.
        value = value * _SUFFIXES[match[2].lower()] if value <= MAX_BUDGET else value
    if not 1 <= value <= MAX_BUDGET:
        raise BudgetError(
            f"budget {text!r}: must be 1 to {MAX_BUDGET:.0e}; expected {BUDGET_FORMS}"
        )
    return int(value)


# --- files ----------------------------------------------------------------------------------------


def family_meta(
    module: HyperDARTSSearch, spec: EvalSpec, checkpoint: str | Path | None = None
) -> dict[str, Any]:
    """What a family file needs to be understood later: where it came from, how it was costed."""
    hp = module.hparams
    return {
        "search_space": {
            "primitives": list(module.primitives),
            "num_nodes": hp.num_nodes,
            "init_channels": hp.init_channels,
            "num_cells": hp.num_cells,
            "stem_multiplier": hp.stem_multiplier,
            "hypernet": hp.hypernet,
            "complexity": hp.complexity,
        },
        "lambda_range": [hp.lambda_min, hp.lambda_max],
        "spec": asdict(spec),
        "checkpoint": None if checkpoint is None else str(checkpoint),
    }


def member_to_dict(member: FamilyMember) -> dict[str, Any]:
    return {
        "lambda": member.lam,
        "lambdas": list(member.lambdas),
        "params": member.params,
        "flops": member.flops,
        "expected_complexity": member.expected_complexity,
        "one_shot_accuracy": member.one_shot_accuracy,
        "genotype": member.genotype.to_dict(),
    }


def save_family(members: Sequence[FamilyMember], path: str | Path, meta: dict[str, Any]) -> Path:
    _check_finite(members, path)
    data = {
        "format": FORMAT,
        "version": VERSION,
        "meta": meta,
        "members": [member_to_dict(m) for m in members],
    }
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _check_finite(members: Sequence[FamilyMember], path: str | Path) -> None:
    """Refuse NaN and infinity: JSON has no such numbers, and load_family would refuse the file."""
    for i, m in enumerate(members):
        accuracy = [] if m.one_shot_accuracy is None else [m.one_shot_accuracy]
        fields = {"lambdas": m.lambdas, "expected_complexity": [m.expected_complexity]}
        for name, values in {**fields, "one_shot_accuracy": accuracy}.items():
            if not all(math.isfinite(x) for x in values):
                raise FamilyError(
                    f"refusing to write {path}: member #{i} has a non-finite {name} ({values}); "
                    "the earlier file is kept. The hypernetwork's outputs are not finite: derive "
                    "from an earlier checkpoint of the search"
                )


def load_family(path: str | Path) -> tuple[list[FamilyMember], dict[str, Any]]:
    """The members and the meta of a family.json, checked field by field."""
    path = Path(path)
    data = _read_json(path)
    if data.get("format") != FORMAT:
        raise FamilyError(f"{path}: 'format' is {data.get('format')!r}, expected {FORMAT!r}")
    if data.get("version") != VERSION:
        raise FamilyError(
            f"{path}: 'version' is {data.get('version')!r}; this hyperdarts reads version {VERSION}"
        )
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise FamilyError(f"{path}: 'meta' must be a JSON object, got {type(meta).__name__}")
    members = data.get("members")
    if not isinstance(members, list):
        raise FamilyError(f"{path}: 'members' must be a list of members, got {members!r:.80}")
    return [_member_from_dict(m, f"{path}: members[{i}]") for i, m in enumerate(members)], meta


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json(path, FamilyError, "family file")
    if not isinstance(data, dict):
        raise FamilyError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _member_from_dict(entry: Any, where: str) -> FamilyMember:
    if not isinstance(entry, dict):
        raise FamilyError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    missing = [k for k in MEMBER_FIELDS if k not in entry]
    if missing:
        raise FamilyError(f"{where}: missing field(s) {missing}")
    lambdas = entry["lambdas"]
    if not isinstance(lambdas, list) or not lambdas or not all(_is_lambda(x) for x in lambdas):
        raise FamilyError(f"{where}.lambdas: expected a non-empty list of λ >= 0, got {lambdas!r}")
    if not _is_number(entry["lambda"]) or not math.isclose(entry["lambda"], min(lambdas)):
        raise FamilyError(
            f"{where}.lambda: {entry['lambda']!r} must be the smallest of lambdas ({min(lambdas)})"
        )
    accuracy = entry["one_shot_accuracy"]
    if accuracy is not None and not (_is_number(accuracy) and 0 <= accuracy <= 1):
        raise FamilyError(f"{where}.one_shot_accuracy: {accuracy!r} must be null or in [0, 1]")
    if not _is_number(entry["expected_complexity"]):
        raise FamilyError(f"{where}.expected_complexity: {entry['expected_complexity']!r}")
    try:
        genotype = Genotype.from_dict(entry["genotype"], source=f"{where}.genotype")
    except GenotypeError as err:
        raise FamilyError(str(err)) from err
    return FamilyMember(
        lambdas=[float(x) for x in lambdas],
        genotype=genotype,
        params=_count(entry, "params", where),
        flops=_count(entry, "flops", where),
        expected_complexity=float(entry["expected_complexity"]),
        one_shot_accuracy=None if accuracy is None else float(accuracy),
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_lambda(x: Any) -> bool:
    return _is_number(x) and x >= 0  # 0: a search without complexity penalty (plain DARTS)


def _count(entry: dict[str, Any], key: str, where: str) -> int:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FamilyError(f"{where}.{key}: expected a non-negative integer, got {value!r}")
    return value


def save_family_csv(members: Sequence[FamilyMember], path: str | Path) -> Path:
    """One row per member, for spreadsheets; family.json stays the file to read back."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for m in members:
        writer.writerow(
            [
                f"{m.lam:.6g}",
                " ".join(f"{lam:.6g}" for lam in m.lambdas),
                m.params,
                m.flops,
                f"{m.expected_complexity:.6f}",
                "" if m.one_shot_accuracy is None else f"{m.one_shot_accuracy:.6f}",
                genotype_string(m.genotype),
            ]
        )
    return atomic_write_text(path, buffer.getvalue())


def genotype_string(genotype: Genotype) -> str:
    """One line: ``normal: op/input+op/input … | reduce: …``, nodes in order.

    The concat list is shown only when it differs from all intermediate nodes (what derivation
    produces).
    """
    default = tuple(range(2, 2 + genotype.num_nodes))
    cells = []
    for cell_type in CELL_TYPES:
        edges = genotype.cell(cell_type)
        pairs = [edges[k : k + 2] for k in range(0, len(edges), 2)]
        nodes = ["+".join(f"{op}/{src}" for op, src in pair) for pair in pairs]
        text = f"{cell_type}: {' '.join(nodes)}"
        if genotype.concat(cell_type) != default:
            text += f" concat {list(genotype.concat(cell_type))}"
        cells.append(text)
    return " | ".join(cells)
