"""Latency tables: measured milliseconds of every (operator, in width, out width, resolution)
configuration of a search space on one target, plus a per-network overhead term.

``tables(space, hw)`` is shaped exactly like :meth:`agd.space.SearchSpace.macs_tables` (per layer:
operators x input-width choices x output-width choices, NaN where invalid), so
``Supernet.expected_cost(tables)[0] + table.overhead(space, hw)`` is the differentiable expected latency.
Each configuration is compiled as a network of that one operator at its input size (with the target's
tuned schedules when the table is built with ``trials > 0``) and timed on the target. Entries are keyed
by everything that changes the operator's code (operator, widths, stride, norm/activation style,
expansion, input size, batch), so spaces and layers that share a configuration share its entry. The file
is saved after every entry: an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from agd.io import AgdError, atomic_write_json, read_json
from agd.tuning.measure import TimingConfig
from agd.tuning.rewrite import REWRITES

FORMAT = "agd-latency-table"
VERSION = 2  # 2: the table names its precision and runtime (version 1 files are fp32 TVM tables)
RUNTIMES = ("tvm", "onnxruntime", "inductor")
# the precisions each runtime deploys (agd.machine.PRECISIONS); the reasons for the gaps
RUNTIME_PRECISIONS = {"tvm": ("fp32", "int8"), "onnxruntime": ("fp32", "int8"), "inductor": ("fp32", "bf16", "int8")}
GAPS = {("tvm", "bf16"): "TVM 0.27 has no tensor intrinsic for AVX512-BF16 or AMX-BF16",
        ("onnxruntime", "bf16"): "ONNX Runtime's CPU execution provider has no bf16 convolution"}


def check_runtime(runtime: str, precision: str) -> None:
    """AgdError for an unknown runtime or a precision it does not deploy (naming why)."""
    from agd.machine import require_precision

    if runtime not in RUNTIMES:
        raise AgdError(f"--runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    require_precision(precision)
    if precision not in RUNTIME_PRECISIONS[runtime]:
        raise AgdError(f"--runtime {runtime} --precision {precision}: {GAPS[(runtime, precision)]} "
                       f"({runtime} deploys {', '.join(RUNTIME_PRECISIONS[runtime])})")


def entry_key(spec: Any, op: str, c_in: int, c_out: int, hw: tuple[int, int], batch: int = 1) -> str:
    """Canonical key of one operator configuration (independent of the layer's name)."""
    d = {"op": op, "in": c_in, "out": c_out, "h": hw[0], "w": hw[1], "n": batch, "stride": spec.stride,
         "expansion": spec.expansion if op == "dwsblock" else None, "style": asdict(spec.style)}
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def space_key(space: Any, hw: tuple[int, int] | None, batch: int = 1) -> str:
    from agd.space.config import config_to_dict

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
    def configurations(self, space: Any, hw: tuple[int, int] | None = None, batch: int = 1) -> list[tuple[str, int, str, int, int, tuple[int, int]]]:
        """Every distinct configuration of the space at ``hw``: (key, layer index, op, c_in, c_out, input size)."""
        from agd.space.space import op_valid

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

    def sizes(self, space: Any, batch: int = 1) -> list[tuple[int, int]]:
        """The input sizes (H, W) at which this table is complete for ``space`` (its overhead was measured)."""
        want = json.loads(space_key(space, (0, 0), batch))
        keys = [json.loads(k) for k in self.overheads]
        return sorted((d["h"], d["w"]) for d in keys if {**d, "h": 0, "w": 0} == want)

    def missing(self, space: Any, hw: tuple[int, int] | None = None, batch: int = 1) -> list[tuple]:
        return [c for c in self.configurations(space, hw, batch) if c[0] not in self.entries]

    def _ms(self, key: str, op: str) -> float:
        return 0.0 if op == "identity" else self.entries[key]

    def tables(self, space: Any, hw: tuple[int, int] | None = None, batch: int = 1) -> list[torch.Tensor]:
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

    def overhead(self, space: Any, hw: tuple[int, int] | None = None, batch: int = 1) -> float:
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
        from agd.space.space import SearchSpace

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
        from agd.space.space import SearchSpace

        return self.operator_sum(genotype, hw, batch) + self.overhead(SearchSpace(genotype.config), hw, batch)


# --------------------------------------------------------------------------- measuring
# One call per repeat: TVM's ``min_repeat_ms`` raises the count for short operators, while whole untuned
# networks (seconds per call) are not run number x repeat = 25 times each.
TABLE_TIMING = TimingConfig(number=1, repeat=5, min_repeat_ms=50, warmup=1)


@dataclass(frozen=True)
class TableBuildConfig:
    trials: int = 0  # MetaSchedule trials per configuration (0: untuned default schedules)
    trials_per_task: int = 0  # and at least this many for every task of each configuration (0: no floor)
    database: Path | None = None
    overhead_networks: int = 4  # random genotypes (seeded, + the largest) measured for the overhead term
    batch: int = 1
    seed: int = 1234
    emulated: bool = False
    timing: TimingConfig = TABLE_TIMING
    precision: str = "fp32"
    runtime: str = "tvm"


def _peer_ms(model: torch.nn.Module, x: torch.Tensor, cfg: TableBuildConfig) -> float:
    """Median wall-clock ms of ``model`` deployed with a runtime other than TVM, on this CPU. int8 is
    calibrated on seeded random inputs of the configuration's shape: an operator inside a network sees
    features, not images, and latency does not depend on the ranges."""
    from agd.timing import wall_times_ms
    from agd.tuning import lowp_peers

    calib = [torch.rand(x.shape, generator=torch.Generator().manual_seed(1 + i)) * 2 - 1 for i in range(4)]
    model = model.eval()
    if cfg.runtime == "onnxruntime":
        if cfg.precision == "int8":
            fn, _ = lowp_peers.ort_int8(model, x, calib)
        else:
            from agd.tuning.compare import _ort_session

            sess = _ort_session(model, x, None)
            xn = x.numpy()

            def fn(_x):
                return sess.run(None, {"x": xn})[0]
    elif cfg.precision == "int8":
        fn, _ = lowp_peers.pt2e_int8(model, x, calib)
    elif cfg.precision == "bf16":
        fn, _ = lowp_peers.torch_bf16(model, x, compiled=True)
    else:
        cm = torch.compile(model)

        def fn(inp):
            with torch.no_grad():
                return cm(inp)
    n = max(cfg.timing.repeat, 5)
    ts = wall_times_ms(lambda: fn(x), n, warmup=2)
    return sorted(ts)[len(ts) // 2]


def time_module(model: torch.nn.Module, spec: Any, shape: tuple[int, ...], cfg: TableBuildConfig,
                session: Any = None, timing: Any = None) -> float:
    """Median ms of ``model`` deployed as ``cfg`` says: compiled by TVM for ``spec`` (tuned first when
    cfg.trials or cfg.trials_per_task > 0; int8 through :func:`agd.tuning.int8.compile_int8`), or with
    ONNX Runtime or torch.compile (inductor) on this CPU."""
    from agd.tuning.build import build
    from agd.tuning.export import to_relax
    from agd.tuning.measure import CompiledModel
    from agd.tuning.tune import TuneConfig, database_records, tune

    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    if cfg.runtime != "tvm":
        if spec.rpc is not None or spec.cross_compiler is not None:
            raise AgdError(f"latency table: runtime {cfg.runtime} is measured on this machine, not on {spec.name}")
        return _peer_ms(model, x * 2 - 1, cfg)
    if cfg.precision == "int8":
        from agd.tuning.int8 import compile_int8

        calib = [torch.rand(shape, generator=torch.Generator().manual_seed(1 + i)) * 2 - 1 for i in range(4)]
        trials = max(cfg.trials, cfg.trials_per_task)
        b = compile_int8(model.eval(), x, calib, spec, database=cfg.database if trials else None, trials=trials)
        return CompiledModel(b.executable, b.params, spec, session=session).time_ms(x.numpy(), timing or cfg.timing)["median_ms"]
    prog = to_relax(model.eval(), x)
    if cfg.trials > 0 or cfg.trials_per_task > 0:
        if cfg.database is None:
            raise AgdError("latency table: tuning (trials > 0) needs a database folder")
        tune(prog.mod, spec, cfg.database, TuneConfig(trials=cfg.trials, trials_per_task=cfg.trials_per_task,
                                                      trials_per_iter=min(16, max(cfg.trials, cfg.trials_per_task))))
    use_db = cfg.database is not None and database_records(cfg.database) > 0
    ex = build(prog.mod, spec, cfg.database if use_db else None)
    cm = CompiledModel(ex, prog.params, spec, session=session)
    return cm.time_ms(x.numpy(), timing or cfg.timing)["median_ms"]


def build_table(table: LatencyTable, space: Any, spec: Any, hw: tuple[int, int] | None, cfg: TableBuildConfig,
                path: Path | None = None, progress: Callable[[str], None] | None = None, session: Any = None,
                limit: int | None = None) -> LatencyTable:
    """Measure every configuration of ``space`` at ``hw`` the table lacks (at most ``limit`` this call),
    then the overhead term; saves to ``path`` after each entry."""
    import tvm

    from agd.space import derive
    from agd.space.space import build_op

    if (table.precision, table.runtime) != (cfg.precision, cfg.runtime):
        raise AgdError(f"latency table {path or ''}: measured at {table.describe()}, not {cfg.precision} via "
                       f"{cfg.runtime}; entries of different deployments are not mixed: build a new table")
    earlier = table.provenance.get("runs") or []
    if table.entries and earlier and earlier[-1].get("export_rewrites", []) != list(REWRITES):
        raise AgdError(f"latency table {path or ''}: its entries were measured with export rewrites "
                       f"{earlier[-1].get('export_rewrites', [])}, this agd exports with {list(REWRITES)}; "
                       "the timings are not comparable: build a new table")
    table.provenance.setdefault("runs", []).append({
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "trials_per_configuration": cfg.trials,
        "precision": cfg.precision, "runtime": cfg.runtime,
        "trials_per_task": cfg.trials_per_task,
        "database": str(cfg.database) if cfg.database else None, "tvm": tvm.__version__,
        "emulated": cfg.emulated, "timing": asdict(cfg.timing), "export_rewrites": list(REWRITES)})
    todo = [c for c in table.missing(space, hw, cfg.batch) if c[2] != "identity"]
    if limit is not None:
        todo = todo[:limit]
    for n, (key, i, op, ci, co, size) in enumerate(todo):
        torch.manual_seed(cfg.seed)
        m = build_op(op, space.layers[i], ci, co)
        t0 = time.perf_counter()
        table.entries[key] = time_module(m, spec, (cfg.batch, ci, *size), cfg, session)
        if progress:
            progress(f"[{n + 1}/{len(todo)}] {space.layers[i].name} {op} {ci}->{co} @{size[0]}x{size[1]}: "
                     f"{table.entries[key]:.4f} ms ({time.perf_counter() - t0:.1f} s)")
        if path is not None:
            table.save(path)
    if table.missing(space, hw, cfg.batch) and any(c[2] != "identity" for c in table.missing(space, hw, cfg.batch)):
        return table  # stopped by ``limit``: the overhead needs every entry
    sk = space_key(space, hw, cfg.batch)
    if sk not in table.overheads:
        rng = random.Random(cfg.seed)
        genos = [space.max_genotype()] + [space.random_genotype(rng) for _ in range(cfg.overhead_networks)]
        samples = []
        for g in genos:
            torch.manual_seed(cfg.seed)
            h, w = hw or space.config.reference_size
            ms = time_module(derive(g), spec, (cfg.batch, space.config.in_ch, h, w), cfg, session)
            samples.append(ms - table.operator_sum(g, hw, cfg.batch))
        samples.sort()
        table.overheads[sk] = {"ms": samples[len(samples) // 2], "samples": samples, "networks": len(genos)}
        if progress:
            progress(f"overhead: median {table.overheads[sk]['ms']:.4f} ms over {len(genos)} networks")
        if path is not None:
            table.save(path)
    return table


def validate_table(table: LatencyTable, space: Any, spec: Any, hw: tuple[int, int] | None, cfg: TableBuildConfig,
                   n: int = 30, seed: int = 7, session: Any = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Predicted vs measured latency of ``n`` random derived generators (seeded, distinct from the
    overhead's networks): fraction within ±10 %, Spearman ρ, mean absolute percentage error."""
    from scipy.stats import spearmanr

    from agd.space import derive

    rng = random.Random(seed)
    h, w = hw or space.config.reference_size
    rows = []
    for k in range(n):
        g = space.random_genotype(rng)
        pred = table.predict(g, hw, cfg.batch)
        torch.manual_seed(cfg.seed)
        meas = time_module(derive(g), spec, (cfg.batch, space.config.in_ch, h, w), cfg, session)
        rows.append({"predicted_ms": pred, "measured_ms": meas, "error": pred / meas - 1})
        if progress:
            progress(f"[{k + 1}/{n}] predicted {pred:.3f} ms, measured {meas:.3f} ms ({100 * (pred / meas - 1):+.1f} %)")
    pred = [r["predicted_ms"] for r in rows]
    meas = [r["measured_ms"] for r in rows]
    rho = float(spearmanr(pred, meas).statistic) if n > 1 else float("nan")
    within = sum(abs(r["error"]) <= 0.10 for r in rows) / max(1, n)
    return {"target": table.target, "networks": n, "within_10pct": within, "spearman_rho": rho,
            "mape": sum(abs(r["error"]) for r in rows) / max(1, n), "rows": rows,
            "goal": {"within_10pct": 0.90, "spearman_rho": 0.95},
            "meets_goal": within >= 0.90 and rho >= 0.95}
