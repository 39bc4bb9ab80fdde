"""Building latency tables (``agd latency-table build`` / ``validate``): each configuration of a search
space is compiled as a network of that one operator at its input size (with the target's tuned schedules
when the table is built with ``trials > 0``) and timed on the target, by TVM or, for another runtime, on
this CPU. The table format itself (:class:`agd.cost.latency.LatencyTable`, pure torch) lives beside the MACs
cost model. The file is saved after every entry: an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from scipy.stats import spearmanr

from agd.arch import derive, max_genotype, random_genotype
from agd.cost.latency import LatencyTable, space_key
from agd.io import AgdError
from agd.space.space import SearchSpace, build_op
from agd.status import package_version
from agd.timing import wall_summary
from agd.tuning import lowp_peers
from agd.tuning.build import build
from agd.tuning.compare import ort_session
from agd.tuning.export import to_relax
from agd.tuning.int8 import compile_int8
from agd.tuning.measure import CompiledModel, TimingConfig
from agd.tuning.rewrite import REWRITES
from agd.tuning.tune import TuneConfig, database_records, tune

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
    calib = [torch.rand(x.shape, generator=torch.Generator().manual_seed(1 + i)) * 2 - 1 for i in range(4)]
    model = model.eval()
    if cfg.runtime == "onnxruntime":
        if cfg.precision == "int8":
            fn, _ = lowp_peers.ort_int8(model, x, calib)
        else:
            sess = ort_session(model, x, None)
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
    return wall_summary(lambda: fn(x), max(cfg.timing.repeat, 5), warmup=2).median_ms


def time_module(model: torch.nn.Module, spec: Any, shape: tuple[int, ...], cfg: TableBuildConfig,
                session: Any = None, timing: Any = None) -> float:
    """Median ms of ``model`` deployed as ``cfg`` says: compiled by TVM for ``spec`` (tuned first when
    cfg.trials or cfg.trials_per_task > 0; int8 through :func:`agd.tuning.int8.compile_int8`), or with
    ONNX Runtime or torch.compile (inductor) on this CPU."""
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    if cfg.runtime != "tvm":
        if spec.rpc is not None or spec.cross_compiler is not None:
            raise AgdError(f"latency table: runtime {cfg.runtime} is measured on this machine, not on {spec.name}")
        return _peer_ms(model, x * 2 - 1, cfg)
    if cfg.precision == "int8":
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


def build_table(table: LatencyTable, space: SearchSpace, spec: Any, hw: tuple[int, int] | None, cfg: TableBuildConfig,
                path: Path | None = None, progress: Callable[[str], None] | None = None, session: Any = None,
                limit: int | None = None) -> LatencyTable:
    """Measure every configuration of ``space`` at ``hw`` the table lacks (at most ``limit`` this call),
    then the overhead term; saves to ``path`` after each entry."""
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
        "database": str(cfg.database) if cfg.database else None, "tvm": package_version("apache-tvm"),
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
        genos = [max_genotype(space)] + [random_genotype(space, rng) for _ in range(cfg.overhead_networks)]
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


def validate_table(table: LatencyTable, space: SearchSpace, spec: Any, hw: tuple[int, int] | None, cfg: TableBuildConfig,
                   n: int = 30, seed: int = 7, session: Any = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Predicted vs measured latency of ``n`` random derived generators (seeded, distinct from the
    overhead's networks): fraction within ±10 %, Spearman ρ, mean absolute percentage error."""
    rng = random.Random(seed)
    h, w = hw or space.config.reference_size
    rows = []
    for k in range(n):
        g = random_genotype(space, rng)
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
