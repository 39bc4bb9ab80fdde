"""MetaSchedule tuning with a persistent JSON database per target.

The model's trial budget is split over its convolution tasks by their share of its arithmetic
(:func:`allocate_trials`). The database (``database_workload.json`` + ``database_tuning_record.json`` in
the work dir) is appended record by record as candidates are measured, so a killed run loses at most
the batch in flight; the next run skips every workload that already has its share of the trials in
records (or more) and warm-starts the rest from the records there. Workloads shared with an earlier architecture (same operator, shapes, target) are
therefore tuned once.

Builds run in worker processes with :func:`build_candidate`, which avoids TVM's default builder's
``import tvm.s_tir.tensor_intrin`` (30-48 s per worker here, more than the default build timeout).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agd.tuning.build import fused_module, tvm_target
from agd.tuning.targets import TargetSpec

DB_FILES = ("database_workload.json", "database_tuning_record.json")


@dataclass(frozen=True)
class TuneConfig:
    trials: int = 64  # budget for this model, split over its tuned tasks by their share of the work
    min_trials_per_task: int = 16
    trials_per_iter: int = 16
    runner_timeout_s: float = 8.0  # short: legalized instance_norm yields pathologically slow candidates
    builder_timeout_s: float = 120.0
    seed: int = 0
    population: int = 128  # evolutionary search population (MetaSchedule's default 512 is slow on 2 cores)
    # tuned workloads: those whose task name contains one of these (the convolutions); the rest (norms,
    # pads, reshapes) keep default schedules; legalized instance_norm candidates are pathologically slow
    task_filter: tuple[str, ...] = ("conv",)


@dataclass
class TuneReport:
    tasks: int
    tasks_tuned: int  # tasks that needed tuning this run
    tasks_reused: int  # tasks already tuned in the database (earlier architecture or interrupted run)
    records_before: int
    records_after: int
    seconds: float
    database_digest: str


def build_candidate(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule builder function: TVM's default build without importing ``tvm.s_tir.tensor_intrin``."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def worker_memory_limit() -> int:
    """Bytes of address space a tuning worker may use: a quarter of this machine's memory, at least 4 GiB.
    MetaSchedule's builders and runners are child processes; one pathological candidate (seen here: a
    builder worker of an SR convolution at 23.5 GB resident) would otherwise swap the machine to a halt
    long before the builder's timeout can fire."""
    import os

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(4 << 30, total // 4)


def limit_worker_memory() -> None:
    """PopenPool worker initializer (builders and runners): cap the worker's address space at
    :func:`worker_memory_limit`, so a runaway candidate fails with an allocation error instead."""
    import resource

    limit = worker_memory_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def database_records(work_dir: str | Path) -> int:
    p = Path(work_dir) / DB_FILES[1]
    if not p.is_file():
        return 0
    with open(p, "rb") as f:
        return sum(1 for line in f if line.strip())


def database_digest(work_dir: str | Path) -> str:
    """sha256 over both database files (empty files if absent)."""
    h = hashlib.sha256()
    for name in DB_FILES:
        p = Path(work_dir) / name
        h.update(name.encode())
        h.update(p.read_bytes() if p.is_file() else b"")
    return h.hexdigest()


def _records_per_workload(db: Any, tasks: list[Any]) -> list[int]:
    counts = []
    for t in tasks:
        mod = t.dispatched[0]
        if not db.has_workload(mod):
            counts.append(0)
            continue
        wl = db.commit_workload(mod)
        counts.append(len(db.get_top_k(wl, 1 << 20)))
    return counts


def task_work(task: Any) -> float:
    """A task's share of the model's arithmetic: its FLOPs times how often the model calls it."""
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        flops = float(estimate_tir_flops(task.dispatched[0]))
    except Exception:  # noqa: BLE001 (an estimator gap must not stop tuning: count the task as average)
        flops = float("nan")
    return flops * max(1, int(task.weight))


def allocate_trials(tasks: list[Any], trials: int, floor: int) -> list[int]:
    """Split ``trials`` over ``tasks`` in proportion to their work (:func:`task_work`), at least ``floor``
    each (and at most ``trials``), so the convolutions that dominate the model get the search; an even
    split spends as much on a 1x1 stem as on a body convolution called eight times."""
    if not tasks:
        return []
    work = [task_work(t) for t in tasks]
    known = [w for w in work if w == w and w > 0]
    mean = sum(known) / len(known) if known else 1.0
    work = [w if w == w and w > 0 else mean for w in work]
    total = sum(work)
    floor = min(floor, max(1, trials // len(tasks)))  # a small budget is not multiplied by the floor
    return [min(trials, max(floor, round(trials * w / total))) for w in work]


def tune(mod: Any, spec: TargetSpec, work_dir: str | Path, config: TuneConfig = TuneConfig(),
         runner: Any = None) -> TuneReport:
    """Tune the Relax module's fused workloads for ``spec`` into the database in ``work_dir``.

    ``runner`` defaults to a local runner (the build machine is the target); for RPC targets pass
    :func:`agd.tuning.measure.rpc_runner`'s result."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks, extracted_tasks_to_tune_contexts

    t0 = time.perf_counter()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    target = tvm_target(spec)
    fused = fused_module(mod, target)
    tasks = [t for t in extract_tasks(fused, target)
             if any(k in t.task_name for k in config.task_filter)]
    db = ms.database.JSONDatabase(work_dir=str(work_dir))
    before = database_records(work_dir)
    alloc = allocate_trials(tasks, config.trials, config.min_trials_per_task)
    counts = _records_per_workload(db, tasks)
    todo = [(t, a) for t, a, n in zip(tasks, alloc, counts) if n < a] if config.trials > 0 else []
    runner = runner or ms.runner.LocalRunner(timeout_sec=config.runner_timeout_s, initializer=limit_worker_memory)
    builder = ms.builder.LocalBuilder(f_build=build_candidate, timeout_sec=config.builder_timeout_s,
                                      initializer=limit_worker_memory)
    # one task per tune_tasks call: MetaSchedule commits a task's records to the database when it joins
    # that task's measurements, so this bounds what a killed run loses to the task in flight
    for k, (task, budget) in enumerate(todo):
        strategy = ms.search_strategy.EvolutionarySearch(population_size=config.population,
                                                         init_min_unmeasured=min(50, config.population // 2))
        contexts, weights = extracted_tasks_to_tune_contexts([task], work_dir=str(work_dir), strategy=strategy,
                                                             seed=config.seed + k)
        ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work_dir),
                           max_trials_global=budget, max_trials_per_task=budget,
                           num_trials_per_iter=min(config.trials_per_iter, budget),
                           builder=builder, runner=runner, database=db)
    return TuneReport(len(tasks), len(todo), len(tasks) - len(todo), before,
                      database_records(work_dir), time.perf_counter() - t0, database_digest(work_dir))
