"""The resource budget: parsing, the dual-ascent controller that steers the search to it, and the
budget-constrained derivation of the final architecture.

Controller (replaces AutoGAN-Distiller's hand-tuned λ schedule): the architecture loss gets the term
``λ · log(E / B)`` (E: the supernet's differentiable expected cost, B: the budget), and after every
architecture step the multiplier follows dual ascent on the constraint ``log(E / B) <= 0``:
``λ ← clip(λ + η · log(E / B), 0, λ_max)``. Over budget λ grows until the cost gradient wins; under budget
it shrinks back to 0 and the distillation loss is free to buy quality. Working on log(E/B) makes η
independent of the cost's unit and magnitude (MACs or milliseconds, 1 G or 1 T).

Derivation: the plain argmax of the operator and width distributions can land anywhere near the budget;
:func:`derive_within_budget` returns the most probable architecture (maximum sum of log-probabilities of
its choices) whose cost lies within ``±tol`` of the budget, by dynamic programming over the width chain
and a fine grid of cost.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np
import torch

from agd.arch import Genotype, LayerChoice, macs_extremes
from agd.cost.latency import LatencyTable
from agd.io import AgdError
from agd.space import SearchSpace, op_valid

_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_macs(text: str) -> float:
    """'12G', '1.5e9', '800M', '0.3T' → MACs."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kKmMgGtT]?)(?:MACs?)?\s*", str(text))
    if not m:
        raise AgdError(f"--macs {text!r}: expected a number with an optional unit, e.g. 12G, 800M, 1.5e9")
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


def parse_ms(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*", str(text))
    if not m:
        raise AgdError(f"--latency {text!r}: expected milliseconds, e.g. 15ms")
    return float(m.group(1)) * (1000.0 if m.group(2) == "s" else 1.0)


@dataclass(frozen=True)
class Budget:
    """A cost budget for the search: ``kind`` "macs" (at the space's reference input) or "latency" (ms)."""

    kind: str
    value: float
    unit: str = "MACs"
    overhead: float = 0.0  # per-network constant (latency tables)
    size: tuple[int, int] | None = None  # the input (H, W) a latency budget is for (None: the space's reference)
    deployment: str | None = None  # a latency budget's target, precision and runtime ("x86, int8 via tvm")

    def describe(self) -> str:
        if self.kind == "macs":
            return f"{self.value / 1e9:.3f} GMACs"
        return f"{self.value:.3f} ms" + (f" on {self.deployment}" if self.deployment else "")


def macs_budget(space: SearchSpace, *, macs: str | float | None = None, ratio: float | None = None,
                teacher_macs: float | None = None) -> Budget:
    """A MACs budget from ``macs`` or ``ratio`` x the teacher's MACs; checked against the space's range."""
    if (macs is None) == (ratio is None):
        raise AgdError("budget: give exactly one of --macs and --ratio")
    if ratio is not None:
        if not 0 < ratio <= 1:
            raise AgdError(f"--ratio {ratio}: must be in (0, 1]")
        if teacher_macs is None:
            raise AgdError("--ratio needs the teacher's MACs")
        value = ratio * teacher_macs
    else:
        value = parse_macs(macs) if isinstance(macs, str) else float(macs)
    (mn, _), (mx, _) = macs_extremes(space)
    hw = "x".join(map(str, space.config.reference_size))
    if value < mn:
        raise AgdError(f"budget {value / 1e9:.3f} GMACs is below the smallest network of the {space.kind} space "
                       f"({mn / 1e9:.3f} GMACs at {hw})")
    if value > mx:
        raise AgdError(f"budget {value / 1e9:.3f} GMACs is above the largest network of the {space.kind} space "
                       f"({mx / 1e9:.3f} GMACs at {hw}); no search is needed")
    return Budget("macs", value)


WIDTH_FACTORS = (1.0, 0.75, 0.5, 0.375, 0.25, 0.125)


def narrowed(config, factor: float):
    """``config`` with every fixed width (SR: ``nf``; translation: stem, down and up widths) times ``factor``,
    rounded to the space's ``round_to`` (at least that)."""
    if factor == 1.0:
        return config
    r = lambda w: max(config.round_to, int(round(w * factor / config.round_to)) * config.round_to)  # noqa: E731
    if config.kind == "sr":
        return replace(config, nf=r(config.nf))
    return replace(config, stem_width=r(config.stem_width), down_widths=tuple(r(w) for w in config.down_widths),
                   up_widths=tuple(r(w) for w in config.up_widths))


def fit_space_to_budget(config, value: float):
    """A space whose networks can meet a MACs budget: ``config`` itself when its smallest network fits, else
    the widest narrowing (:data:`WIDTH_FACTORS`) whose smallest network takes at most half the budget (room to
    search), else the widest whose smallest fits at all. A compact teacher (an IMDN, an SRVGGNetCompact, a
    GAN Compression student) at 1/10 of its MACs is below the smallest network of the full-width spaces.
    Returns (config, factor); a budget below every narrowing raises, naming the smallest."""
    def smallest(f: float) -> float:
        return macs_extremes(SearchSpace(narrowed(config, f)))[0][0]

    if smallest(1.0) <= value:
        return config, 1.0
    mins = {f: smallest(f) for f in WIDTH_FACTORS[1:]}
    for room in (0.5, 1.0):
        for f in WIDTH_FACTORS[1:]:
            if mins[f] <= room * value:
                return narrowed(config, f), f
    f = WIDTH_FACTORS[-1]
    hw = "x".join(map(str, config.reference_size))
    raise AgdError(f"budget {value / 1e9:.3f} GMACs is below the smallest network of the {config.kind} space even at "
                   f"{f:g} of its widths ({mins[f] / 1e9:.3f} GMACs at {hw}); give a larger --ratio or --macs")


def cost_extremes(space: SearchSpace, tables: list[torch.Tensor]) -> tuple[float, float]:
    """(min, max) of the total table cost over every valid architecture (DP over the width chain)."""
    out = []
    for better in (min, max):
        best = {space.config.in_ch: 0.0}
        for i, spec in enumerate(space.layers):
            nxt: dict[int, float] = {}
            for a, ci in enumerate(space.in_choices(i)):
                if ci not in best:
                    continue
                for b, co in enumerate(spec.widths):
                    for k, op in enumerate(spec.ops):
                        c = float(tables[i][k, a, b])
                        if math.isnan(c) or not op_valid(op, spec, ci, co):
                            continue
                        v = best[ci] + c
                        nxt[co] = v if co not in nxt else better(nxt[co], v)
            best = nxt
        out.append(better(best.values()))
    return out[0], out[1]


def latency_budget(space: SearchSpace, ms: str | float, table_path, target: str | None = None,
                   hw: tuple[int, int] | None = None, precision: str | None = None,
                   runtime: str | None = None) -> tuple[Budget, list[torch.Tensor]]:
    """A latency budget from a latency table (``agd latency-table build``): the per-layer tables in ms and
    the per-network overhead; checked against the space's range under the table. ``hw`` is the input size
    the budget is for; by default the one size the table covers for this space, else the space's
    reference size."""
    value = parse_ms(ms) if isinstance(ms, str) else float(ms)
    table = LatencyTable.load(table_path)
    if target is not None and table.target != target:
        raise AgdError(f"--latency-table {table_path}: was measured for target {table.target!r}, not {target!r}")
    table.check_for(precision, runtime, f"--latency-table {table_path}")
    hw = tuple(hw) if hw else _table_size(table, table_path, space)
    tables = table.tables(space, hw)
    overhead = table.overhead(space, hw)
    lo, hi = cost_extremes(space, tables)
    if value < lo + overhead:
        raise AgdError(f"budget {value:.3f} ms is below the fastest network of the {space.kind} space on "
                       f"{table.target} ({lo + overhead:.3f} ms predicted)")
    if value > hi + overhead:
        raise AgdError(f"budget {value:.3f} ms is above the slowest network of the {space.kind} space on "
                       f"{table.target} ({hi + overhead:.3f} ms predicted); no search is needed")
    return Budget("latency", value, "ms", overhead, size=hw, deployment=table.describe()), tables


def _table_size(table: LatencyTable, table_path, space: SearchSpace) -> tuple[int, int]:
    sizes = table.sizes(space)
    ref = tuple(space.config.reference_size)
    if len(sizes) == 1:
        return sizes[0]
    if not sizes or ref in sizes:
        return ref  # none: table.tables() names what is missing
    raise AgdError(f"--latency-table {table_path}: covers the {space.kind} space at "
                   f"{', '.join('x'.join(map(str, s)) for s in sizes)}; choose the input size with --latency-size")


@dataclass
class DualController:
    """Dual ascent on λ for the constraint log(E / B) <= 0 (see the module docstring)."""

    budget: float
    step: float = 0.05
    lam: float = 0.0
    lam_max: float = 100.0

    def penalty(self, expected: torch.Tensor) -> torch.Tensor:
        return self.lam * torch.log(expected / self.budget)

    def update(self, expected: float) -> float:
        self.lam = float(min(max(self.lam + self.step * math.log(expected / self.budget), 0.0), self.lam_max))
        return self.lam

    def state_dict(self) -> dict:
        return {"budget": self.budget, "step": self.step, "lam": self.lam, "lam_max": self.lam_max}

    def load_state_dict(self, d: dict) -> None:
        self.budget, self.step, self.lam, self.lam_max = d["budget"], d["step"], d["lam"], d["lam_max"]


def derive_within_budget(space: SearchSpace, op_probs: list[torch.Tensor], width_probs: list[torch.Tensor],
                         tables: list[torch.Tensor], budget: float, *, tol: float = 0.05, overhead: float = 0.0,
                         buckets: int = 4000) -> Genotype:
    """The most probable architecture whose cost (sum of table entries + ``overhead``) lies in
    ``[budget (1 - tol), budget (1 + tol)]``; AgdError when the space has none."""
    n = len(space.layers)
    hi = budget * (1 + tol) - overhead
    lo = budget * (1 - tol) - overhead
    if hi <= 0:
        raise AgdError(f"budget {budget}: below the fixed overhead {overhead}")
    unit = hi / buckets
    # keep the rounding error (<= half a unit per layer) inside the band
    lo_b = math.ceil((lo + 0.5 * unit * n) / unit)
    hi_b = math.floor((hi - 0.5 * unit * n) / unit)
    neg = -np.inf
    dp = {space.config.in_ch: np.full(buckets + 1, neg)}
    dp[space.config.in_ch][0] = 0.0
    back: list[dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
    for li, spec in enumerate(space.layers):
        ins = space.in_choices(li)
        t = tables[li].numpy()
        lp_op = np.log(op_probs[li].detach().double().clamp_min(1e-30).cpu().numpy())
        lp_w = np.log(width_probs[li].detach().double().clamp_min(1e-30).cpu().numpy())
        new, layer_back = {}, {}
        for b_idx, co in enumerate(spec.widths):
            best = np.full(buckets + 1, neg)
            arg_in = np.zeros(buckets + 1, dtype=np.int64)
            arg_op = np.zeros(buckets + 1, dtype=np.int64)
            for a, ci in enumerate(ins):
                if ci not in dp:
                    continue
                prev = dp[ci]
                for k in range(len(spec.ops)):
                    c = t[k, a, b_idx]
                    if math.isnan(c) or not op_valid(spec.ops[k], spec, ci, co):
                        continue
                    shift = int(round(c / unit))
                    if shift > buckets:
                        continue
                    cand = np.full(buckets + 1, neg)
                    cand[shift:] = prev[: buckets + 1 - shift] + lp_op[k] + lp_w[b_idx]
                    better = cand > best
                    best[better] = cand[better]
                    arg_in[better] = a
                    arg_op[better] = k
            if np.isfinite(best).any():
                new[co] = best
                layer_back[co] = (arg_in, arg_op)
        dp = new
        back.append(layer_back)
    # best end state within the band
    choice, score = None, neg
    for co, arr in dp.items():
        if lo_b > hi_b:
            break
        seg = arr[max(lo_b, 0): hi_b + 1]
        if seg.size and np.max(seg) > score:
            score, choice = float(np.max(seg)), (co, max(lo_b, 0) + int(np.argmax(seg)))
    if choice is None:
        raise AgdError(f"budget: no architecture of the {space.kind} space costs within ±{tol:.0%} of {budget:.4g}")
    co, bucket = choice
    layers: list[LayerChoice] = []
    for li in range(n - 1, -1, -1):
        spec = space.layers[li]
        arg_in, arg_op = back[li][co]
        a, k = int(arg_in[bucket]), int(arg_op[bucket])
        ins = space.in_choices(li)
        layers.append(LayerChoice(spec.name, spec.ops[k], co))
        c = tables[li][k, a, spec.widths.index(co)].item()
        bucket -= int(round(c / unit))
        co = ins[a]
    g = Genotype(space.config, layers[::-1])
    space.validate(g)
    return g
