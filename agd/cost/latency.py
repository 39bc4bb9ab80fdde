"""The latency-table format: measured milliseconds of every (operator, in width, out width, resolution)
configuration of a search space on one deployment (target, precision, runtime), plus a per-network
overhead term; pure torch, beside the MACs cost model (:mod:`agd.cost.count`). Tables are measured by
:mod:`agd.tuning.latency_table` (``agd latency-table build``) and read by the search's latency budget.

``tables(space, hw)`` is shaped exactly like :meth:`agd.space.SearchSpace.macs_tables` (per layer:
operators x input-width choices x output-width choices, NaN where invalid), so
``Supernet.expected_cost(tables)[0] + table.overhead(space, hw)`` is the differentiable expected latency.
Entries are keyed by everything that changes the operator's code (operator, widths, stride, norm/activation
style, expansion, input size, batch), so spaces and layers that share a configuration share its entry.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from agd.io import AgdError, atomic_write_json, read_json
from agd.machine import require_precision
from agd.space.config import config_to_dict
from agd.space.space import SearchSpace, op_valid

FORMAT = "agd-latency-table"
VERSION = 2  # 2: the table names its precision and runtime (version 1 files are fp32 TVM tables)
RUNTIMES = ("tvm", "onnxruntime", "inductor")
# the precisions each runtime deploys (agd.machine.PRECISIONS); the reasons for the gaps
RUNTIME_PRECISIONS = {"tvm": ("fp32", "int8"), "onnxruntime": ("fp32", "int8"), "inductor": ("fp32", "bf16", "int8")}
GAPS = {("tvm", "bf16"): "TVM 0.27 has no tensor intrinsic for AVX512-BF16 or AMX-BF16",
        ("onnxruntime", "bf16"): "ONNX Runtime's CPU execution provider has no bf16 convolution"}


def check_runtime(runtime: str, precision: str, on_this_cpu: bool = True) -> None:
    """AgdError for an unknown runtime or a precision it does not deploy (naming why), or, where the
    networks run on this CPU (``on_this_cpu``), a precision this CPU has no instructions for."""
    if runtime not in RUNTIMES:
        raise AgdError(f"--runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if on_this_cpu:
        require_precision(precision)
    if precision not in RUNTIME_PRECISIONS[runtime]:
        raise AgdError(f"--runtime {runtime} --precision {precision}: {GAPS[(runtime, precision)]} "
                       f"({runtime} deploys {', '.join(RUNTIME_PRECISIONS[runtime])})")


def entry_key(spec: Any, op: str, c_in: int, c_out: int, hw: tuple[int, int], batch: int = 1) -> str:
    """Canonical key of one operator configuration (independent of the layer's name)."""
    d = {"op": op, "in": c_in, "out": c_out, "h": hw[0], "w": hw[1], "n": batch, "stride": spec.stride,
         "expansion": spec.expansion if op == "dwsblock" else None, "style": asdict(spec.style)}
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def space_key(space: SearchSpace, hw: tuple[int, int] | None, batch: int = 1) -> str:
    """Canonical key of a space at one input size and batch (the overhead term's key)."""
    h, w = hw or space.config.reference_size
    return json.dumps({"space": config_to_dict(space.config), "h": h, "w": w, "n": batch}, sort_keys=True,
                      separators=(",", ":"))


@dataclass
class LatencyTable:
    """Per-target table; ``provenance`` records how entries were measured (tuning trials, database,
    timing settings, TVM version, whether the device was emulated)."""

    target: str
    tvm_target: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    entries: dict[str, float] = field(default_factory=dict)  # entry_key → ms
    overheads: dict[str, dict[str, Any]] = field(default_factory=dict)  # space_key → {"ms", "samples", ...}
    precision: str = "fp32"  # what the entries were measured at (agd.machine.PRECISIONS)
    runtime: str = "tvm"  # and with which runtime (RUNTIMES)

    # ----------------------------------------------------------------- file
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "target": self.target, "tvm_target": self.tvm_target,
                "precision": self.precision, "runtime": self.runtime,
                "provenance": self.provenance, "entries": self.entries, "overheads": self.overheads}

    def describe(self) -> str:
        """``x86, int8 via tvm``: what the table's milliseconds are of."""
        return f"{self.target}, {self.precision} via {self.runtime}"

    def check_for(self, precision: str | None, runtime: str | None, what: str) -> None:
        """AgdError when the table was measured at another precision or with another runtime than asked."""
        for name, want, have in (("precision", precision, self.precision), ("runtime", runtime, self.runtime)):
            if want is not None and want != have:
                raise AgdError(f"{what}: measured at {self.describe()}, not {name} {want}; build a table for it "
                               f"(agd latency-table build --precision {precision or self.precision} "
                               f"--runtime {runtime or self.runtime})")

    def save(self, path: str | Path) -> Path:
        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        path = Path(path)
        d = read_json(path, "latency table")
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise AgdError(f"latency table {path}: not an agd latency table (expected \"format\": \"{FORMAT}\")")
        if d.get("version") not in (1, VERSION):
            raise AgdError(f"latency table {path}: version {d.get('version')!r} unsupported (this agd reads 1 and {VERSION})")
        bad = [k for k, v in d.get("entries", {}).items() if not isinstance(v, (int, float)) or not v >= 0]
        if bad:
            raise AgdError(f"latency table {path}: entry {bad[0]} is not a non-negative number of ms")
        precision, runtime = d.get("precision", "fp32"), d.get("runtime", "tvm")
        if runtime not in RUNTIMES or precision not in RUNTIME_PRECISIONS[runtime]:
            raise AgdError(f"latency table {path}: unknown precision/runtime {precision!r}/{runtime!r}")
        return cls(d["target"], d["tvm_target"], d.get("provenance", {}), {k: float(v) for k, v in d["entries"].items()},
                   d.get("overheads", {}), precision, runtime)

    # ----------------------------------------------------------------- queries
    def configurations(self, space: SearchSpace, hw: tuple[int, int] | None = None, batch: int = 1) -> list[tuple[str, int, str, int, int, tuple[int, int]]]:
        """Every distinct configuration of the space at ``hw``: (key, layer index, op, c_in, c_out, input size)."""
        seen, out = set(), []
        for i, (spec, size) in enumerate(zip(space.layers, space.input_sizes(hw))):
            for op in spec.ops:
                for ci in space.in_choices(i):
                    for co in spec.widths:
                        if op_valid(op, spec, ci, co):
                            k = entry_key(spec, op, ci, co, size, batch)
                            if k not in seen:
                                seen.add(k)
                                out.append((k, i, op, ci, co, size))
        return out

    def sizes(self, space: SearchSpace, batch: int = 1) -> list[tuple[int, int]]:
        """The input sizes (H, W) at which this table is complete for ``space`` (its overhead was measured)."""
        want = json.loads(space_key(space, (0, 0), batch))
        keys = [json.loads(k) for k in self.overheads]
        return sorted((d["h"], d["w"]) for d in keys if {**d, "h": 0, "w": 0} == want)

    def missing(self, space: SearchSpace, hw: tuple[int, int] | None = None, batch: int = 1) -> list[tuple]:
        return [c for c in self.configurations(space, hw, batch) if c[0] not in self.entries]

    def _ms(self, key: str, op: str) -> float:
        return 0.0 if op == "identity" else self.entries[key]

    def tables(self, space: SearchSpace, hw: tuple[int, int] | None = None, batch: int = 1) -> list[torch.Tensor]:
        """Per layer, milliseconds as float64 (operators, input-width choices, output-width choices); NaN
        where invalid. AgdError when the table lacks configurations of this space and size."""
        miss = [c for c in self.missing(space, hw, batch) if c[2] != "identity"]
        if miss:
            raise AgdError(f"latency table ({self.target}): {len(miss)} configurations of this space at "
                           f"{'x'.join(map(str, hw or space.config.reference_size))} are not measured (first: layer "
                           f"{space.layers[miss[0][1]].name} {miss[0][2]} {miss[0][3]}->{miss[0][4]}); "
                           "run `agd latency-table build` for it")
        out = space.cost_tables(lambda _i, spec, op, ci, co, size: self._ms(entry_key(spec, op, ci, co, size, batch), op),
                                hw)
        return out

    def overhead(self, space: SearchSpace, hw: tuple[int, int] | None = None, batch: int = 1) -> float:
        """Per-network overhead (ms) of this space and size: what whole networks measure beyond the sum of
        their operators (residual adds, upsampling, cache effects, call overhead)."""
        k = space_key(space, hw, batch)
        if k not in self.overheads:
            raise AgdError(f"latency table ({self.target}): no overhead measured for this space at "
                           f"{'x'.join(map(str, hw or space.config.reference_size))}; run `agd latency-table build`")
        return float(self.overheads[k]["ms"])

    @property
    def overhead_ms(self) -> float:
        """The overhead term when the table covers one space and size (the usual case)."""
        if len(self.overheads) != 1:
            raise AgdError(f"latency table ({self.target}): overhead_ms is ambiguous with {len(self.overheads)} "
                           "space/size overheads; use overhead(space, hw)")
        return float(next(iter(self.overheads.values()))["ms"])

    def operator_sum(self, genotype: Any, hw: tuple[int, int] | None = None, batch: int = 1) -> float:
        space = SearchSpace(genotype.config)
        space.validate(genotype)
        total, c_in = 0.0, genotype.config.in_ch
        for spec, ch, size in zip(space.layers, genotype.layers, space.input_sizes(hw)):
            key = entry_key(spec, ch.op, c_in, ch.width, size, batch)
            if ch.op != "identity" and key not in self.entries:
                raise AgdError(f"latency table ({self.target}): layer {spec.name} {ch.op} {c_in}->{ch.width} at "
                               f"{size[0]}x{size[1]} is not measured; run `agd latency-table build`")
            total += self._ms(key, ch.op)
            c_in = ch.width
        return total

    def predict(self, genotype: Any, hw: tuple[int, int] | None = None, batch: int = 1) -> float:
        """Predicted latency (ms) of a derived generator: its operators' entries plus the overhead."""
        return self.operator_sum(genotype, hw, batch) + self.overhead(SearchSpace(genotype.config), hw, batch)
