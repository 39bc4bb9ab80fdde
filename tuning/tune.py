"""MetaSchedule tuning with a persistent JSON database per target.

The model's trial budget is split over its tasks by their share of its arithmetic
(:func:`allocate_trials`), at least a floor each, so the instance norms, reflect-pad gathers and layout
shuffles, which hold little arithmetic, still leave TVM's default CPU schedules (one thread, no
vectorization): on the translation example those took 23 of 114 ms untuned and 5 after 16 trials each.
The shares decide how much a run spends and on which tasks; MetaSchedule's gradient-based scheduler then
decides where those trials go, by measured progress (:func:`tune`). The database
(``database_workload.json`` + ``database_tuning_record.json`` in the work dir) is appended record by
record as candidates are measured, so a killed run loses at most the batch in flight; the next run
skips every workload that already has its share of the trials in records (or more) and gives the rest
only what their share lacks (:func:`trials_left`), warm-started from the records there. Workloads
shared with an earlier architecture (same operator, shapes, target) are therefore tuned once.

Only measured schedules count: a task whose every candidate failed (a runner timeout, a crash) would
build with the default schedule, so it gets further rounds in the same run and is not marked tuned
until one succeeds. Until 2026-11-28 every candidate of the reflect-pad gathers crashed (random index
arguments, :func:`_alloc_arguments`) and the ledger marked them tuned: the figures above for those
gathers were their default schedules.

Builds run in long-lived worker processes (:class:`agd.tuning.builder.PersistentBuilder`) with
:func:`agd.tuning.builder.build_candidate`, which avoids TVM's default builder's
``import tvm.s_tir.tensor_intrin`` (30-48 s per worker here, more than the default build timeout). The
tuning process itself needs that import (every MetaSchedule tune context does it) and makes it in
:func:`import_tensor_intrinsics`, about 4x faster.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agd.io import atomic_write_json, read_json
from agd.tuning.build import fused_module, tvm_target
from agd.tuning.builder import PersistentBuilder
from agd.tuning.targets import TargetSpec
from agd.tuning.tvm_env import (
    estimate_tir_flops,
    extract_tasks,
    extracted_tasks_to_tune_contexts,
    ms,
    tvm,
    tvm_ffi,
)

DB_FILES = ("database_workload.json", "database_tuning_record.json")
# Trials already spent per workload (its structural hash), beside the database: MetaSchedule records
# fewer than it was given when candidates fail or repeat, or a small task's design space runs out (a
# reflect-pad gather has a handful of schedules), and such a task must not be tuned again on every run.
LEDGER = "agd_trials_spent.json"


@dataclass(frozen=True)
class TuneConfig:
    trials: int = 64  # budget for this model, split over its tuned tasks by their share of the work
    min_trials_per_task: int = 16
    trials_per_iter: int = 16
    runner_timeout_s: float = 8.0  # short: some legalized instance_norm candidates are pathologically slow
    builder_timeout_s: float = 120.0
    seed: int = 0
    population: int = 128  # evolutionary search population (MetaSchedule's default 512 is slow on 2 cores)
    # tuned workloads: those whose task name contains one of these (("conv",): the convolutions only, the
    # rest keeping default schedules); empty: every task
    task_filter: tuple[str, ...] = ()
    retries: int = 2  # further rounds for tasks whose every candidate failed (then: the next run)
    # at least this many trials for every task: the budget grows to trials_per_task x tasks where ``trials``
    # is smaller, and the floor becomes this (0: ``trials`` and ``min_trials_per_task`` alone decide)
    trials_per_task: int = 0


def budget_for(config: TuneConfig, n_tasks: int) -> tuple[int, int]:
    """(trials, per-task floor) of a run over ``n_tasks`` tasks: ``trials_per_task`` raises both, so a
    network of 22 tasks gets 22 times the trials of one with a single task (a latency table whose
    configurations differ that much in tasks needs that: a budget per network leaves big ones at a trial
    or two per task, whose schedules are chance)."""
    if config.trials_per_task > 0:
        return max(config.trials, config.trials_per_task * n_tasks), config.trials_per_task
    return config.trials, config.min_trials_per_task


@dataclass
class TuneReport:
    tasks: int
    tasks_tuned: int  # tasks that needed tuning this run
    tasks_reused: int  # tasks already tuned in the database (earlier architecture or interrupted run)
    records_before: int
    records_after: int
    seconds: float
    database_digest: str
    # tasks with no measured schedule after this run (every candidate failed: timeouts, crashes): they
    # build with TVM's default schedule, and the next run tunes them again
    tasks_unscheduled: int = 0


def import_tensor_intrinsics() -> None:
    """``import tvm.s_tir.tensor_intrin`` (which every MetaSchedule tune context does) in a quarter of the time.

    That import parses about 500 TVMScript functions, each calling ``inspect.stack()``. For every frame of
    frozen code on the stack (importlib's), ``inspect.getmodule`` finds no module by file name and then scans
    all of ``sys.modules`` (about 1,400 here): 31,000 such scans, 42 million ``hasattr`` calls, 30-48 s on
    these 2 cores. During the import, a frame's lookup for such a file name (``<frozen ...>``, ``<ast>``: names
    of no file, so no module can be found for a frame by them) is answered once per name; every other lookup
    goes to ``inspect.getmodule`` unchanged, which is restored afterwards. BENCHMARKS.md has the times."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    original = inspect.getmodule
    answered: dict[str, Any] = {}

    def getmodule(obj: Any, _filename: str | None = None) -> Any:
        if _filename is None or not _filename.startswith("<") or not inspect.isframe(obj):
            return original(obj, _filename)
        if _filename not in answered:
            answered[_filename] = original(obj, _filename)
        return answered[_filename]

    inspect.getmodule = getmodule
    try:  # imported here, under the patch, and nowhere else: the patch is what makes it affordable
        import tvm.s_tir.tensor_intrin  # noqa: F401  (registers the tensorization intrinsics)
    finally:
        inspect.getmodule = original


def worker_memory_limit() -> int:
    """Bytes of address space a tuning worker may use: a quarter of this machine's memory, at least 4 GiB.
    MetaSchedule's builders and runners are child processes; one pathological candidate (seen here: a
    builder worker of an SR convolution at 23.5 GB resident) would otherwise swap the machine to a halt
    long before the builder's timeout can fire."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(4 << 30, total // 4)


def limit_worker_memory() -> None:
    """PopenPool worker initializer (builders and runners): cap the worker's address space at
    :func:`worker_memory_limit`, so a runaway candidate fails with an allocation error instead."""
    limit = worker_memory_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _alloc_arguments(fill: Any, device: Any, args_info: list[Any], alloc_repeat: int) -> list[list[Any]]:
    """Measurement arguments: floating-point tensors random (``fill``, as MetaSchedule's default),
    integer tensors zero. The integer arguments of agd's exported graphs are gather indices (the
    ``take``s of reflect padding); MetaSchedule's random integers index far out of bounds and kill the
    measuring process, so every candidate of those tasks failed and they kept TVM's default
    single-threaded schedule. Zero is a valid index for any gather."""
    out = []
    for _ in range(alloc_repeat):
        args = []
        for info in args_info:
            if info[0] != "TENSOR":
                raise NotImplementedError(f"measurement argument {info!r}")
            _, dtype, shape = info
            arg = tvm.runtime.empty(shape=shape, dtype=dtype, device=device)
            if dtype.startswith(("int", "uint", "bool")):
                arg.copyfrom(np.zeros(shape, dtype=dtype))
            else:
                fill(arg)
            args.append(arg)
        out.append(args)
    return out


def alloc_local_arguments(device: Any, args_info: list[Any], alloc_repeat: int) -> list[list[Any]]:
    """``f_alloc_argument`` of agd's local runners (:func:`_alloc_arguments`)."""
    fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure")
    return _alloc_arguments(fill, device, args_info, alloc_repeat)


def alloc_rpc_arguments(session: Any, device: Any, args_info: list[Any], alloc_repeat: int) -> list[list[Any]]:
    """``f_alloc_argument`` of agd's RPC runners: the same arguments, allocated on the remote device."""
    fill = session.get_function("tvm.contrib.random.random_fill_for_measure")
    return _alloc_arguments(fill, device, args_info, alloc_repeat)


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


def _workload_key(task: Any) -> str:
    """The task's workload identity, as MetaSchedule's database matches it (structural hash)."""
    return str(tvm_ffi.structural_hash(task.dispatched[0]))


def read_ledger(work_dir: str | Path) -> dict[str, int]:
    """Trials spent per workload key in ``work_dir`` ({} when none were recorded)."""
    p = Path(work_dir) / LEDGER
    return {str(k): int(v) for k, v in read_json(p, "tuning ledger").items()} if p.is_file() else {}


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
    try:
        flops = float(estimate_tir_flops(task.dispatched[0]))
    except Exception:  # noqa: BLE001 (an estimator gap must not stop tuning: count the task as average)
        flops = float("nan")
    return flops * max(1, int(task.weight))


def allocate_trials(tasks: list[Any], trials: int, floor: int) -> list[int]:
    """Split ``trials`` over ``tasks`` in proportion to their work (:func:`task_work`), at least ``floor``
    each, the floors' trials coming off the others' split (the sum stays within ``trials``, up to
    rounding). These shares bound what a run spends and say which tasks still lack trials; the
    gradient-based scheduler in :func:`tune` decides where the run's trials go. A task without arithmetic
    (a gather, a reshape: 0 FLOPs) gets the floor; one the estimator cannot read counts as average."""
    if not tasks:
        return []
    work = [task_work(t) for t in tasks]
    known = [w for w in work if w == w and w > 0]
    mean = sum(known) / len(known) if known else 1.0
    work = [mean if w != w else max(w, 0.0) for w in work]
    floor = min(floor, max(1, trials // len(tasks)))  # a small budget is not multiplied by the floor
    if sum(work) <= 0:
        return [max(floor, trials // len(tasks))] * len(tasks)
    # water-filling: a task whose share is under the floor gets the floor, and its trials come off the
    # others' split, until every share left is above it (so the floors never push the sum past ``trials``)
    floored = {i for i, w in enumerate(work) if w == 0}
    while True:
        rest = [i for i in range(len(work)) if i not in floored]
        split = trials - floor * len(floored)
        total = sum(work[i] for i in rest)
        low = {i for i in rest if split * work[i] / total < floor}
        if not low:
            break
        floored |= low
        if len(floored) == len(work):
            return [floor] * len(work)
    return [floor if i in floored else min(trials, round(split * work[i] / total)) for i in range(len(work))]


def _drop_unnamed_handlers() -> None:
    """MetaSchedule rebuilds its logging config from the names of its logger's current handlers and
    fails on a handler without one (``'NoneType' object has no attribute 'format'``). One was there
    after earlier tuning runs in the same pytest process (their origin was not traced); dropping it
    only drops log lines."""
    lg = logging.getLogger("tvm.s_tir.meta_schedule")
    for h in list(lg.handlers):
        if h.get_name() is None:
            lg.removeHandler(h)


def trials_left(alloc: list[int], records: list[int]) -> list[int]:
    """Per task, the trials its share still lacks given the records the database already holds for its
    workload (an earlier architecture's, or a killed run's): so resuming never spends more than the
    budget, and a task tuned enough before is skipped."""
    return [max(0, a - n) for a, n in zip(alloc, records)]


def round_size(trials_per_iter: int, budget: int, tasks: int) -> int:
    """Trials per scheduler round. The gradient-based scheduler starts with one round per task, in
    order, and stops at the budget: with ``trials_per_iter`` rounds a budget under ``tasks x
    trials_per_iter`` would tune the first tasks only and leave the rest on TVM's default schedules
    (single-threaded, unvectorized), so a small budget gets smaller rounds, at least one trial each."""
    return max(1, min(trials_per_iter, budget // max(1, tasks)))


def tune(mod: Any, spec: TargetSpec, work_dir: str | Path, config: TuneConfig = TuneConfig(),
         runner: Any = None, builder: Any = None) -> TuneReport:
    """Tune the Relax module's fused workloads for ``spec`` into the database in ``work_dir``.

    The tasks that still lack trials of their share (:func:`allocate_trials`, :func:`trials_left`) are
    tuned together, for the sum of what they lack, under MetaSchedule's gradient-based task scheduler: one
    round for each task (``trials_per_iter``, fewer when the budget is small: :func:`round_size`), then
    each round goes to the task whose weighted latency is falling fastest. The share decides which tasks
    need tuning and how much the run spends, the measurements decide where the trials go: a body
    convolution plateaus within about 64 trials while a stride-2 or 1x1 one keeps improving past 192
    (BENCHMARKS.md), which a split by arithmetic cannot know.

    ``runner`` defaults to a local runner (the build machine is the target); for RPC targets pass
    :func:`agd.tuning.measure.rpc_runner`'s result. ``builder`` defaults to a
    :class:`agd.tuning.builder.PersistentBuilder` of this run (closed at its end); another MetaSchedule
    builder (TVM's ``LocalBuilder``: tests/benchmarks/test_bench_tuning.py) is the caller's to close."""
    t0 = time.perf_counter()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    target = tvm_target(spec)
    fused = fused_module(mod, target)
    tasks = [t for t in extract_tasks(fused, target)
             if not config.task_filter or any(k in t.task_name for k in config.task_filter)]
    db = ms.database.JSONDatabase(work_dir=str(work_dir))
    before = database_records(work_dir)
    trials, floor = budget_for(config, len(tasks))
    alloc = allocate_trials(tasks, trials, floor)
    ledger = read_ledger(work_dir)
    keys = [_workload_key(t) for t in tasks]
    records = _records_per_workload(db, tasks)  # measured schedules (failed candidates are not counted)
    # a task without one builds with TVM's default schedule whatever the ledger says: it lacks its share
    counts = [max(n, ledger.get(k, 0)) if n > 0 else 0 for n, k in zip(records, keys)]
    left = trials_left(alloc, counts) if trials > 0 else [0] * len(tasks)
    # least-tuned first: the scheduler's first round goes in this order, so a small remainder of the
    # budget (a resumed run) reaches the tasks that lack the most
    todo = sorted((i for i in range(len(tasks)) if left[i] > 0), key=lambda i: counts[i] - alloc[i])
    unscheduled: list[int] = []
    if todo:
        import_tensor_intrinsics()
        # a GPU runner is left unlimited: the CUDA driver reserves far more address space than it uses, so
        # an address-space cap makes every measurement fail at CUDA's initialization
        gpu = spec.tvm_target.get("kind") == "cuda"
        runner = runner or ms.runner.LocalRunner(timeout_sec=config.runner_timeout_s,
                                                 f_alloc_argument=alloc_local_arguments,
                                                 initializer=None if gpu else limit_worker_memory)
        own_builder = builder is None
        if own_builder:
            builder = PersistentBuilder(config.builder_timeout_s, initializer=limit_worker_memory)

        def run(which: list[int], budget: int, rounds: int, attempt: int = 0) -> None:
            contexts, weights = [], []
            for i in which:  # one search strategy per task (a shared instance would be re-initialized per task)
                _drop_unnamed_handlers()  # each call rebuilds MetaSchedule's logging config
                strategy = ms.search_strategy.EvolutionarySearch(population_size=config.population,
                                                                 init_min_unmeasured=min(50, config.population // 2))
                c, w = extracted_tasks_to_tune_contexts([tasks[i]], work_dir=str(work_dir), strategy=strategy,
                                                        seed=config.seed + i + 7919 * attempt)
                contexts += c
                weights += w
            # records are committed batch by batch as they are measured: a killed run loses the batch in flight
            ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work_dir),
                               max_trials_global=budget, max_trials_per_task=budget, num_trials_per_iter=rounds,
                               builder=builder, runner=runner, database=db,
                               task_scheduler=ms.task_scheduler.GradientBased(seed=config.seed))

        budget = sum(left[i] for i in todo)
        rounds = round_size(config.trials_per_iter, budget, len(todo))
        try:
            run(todo, budget, rounds)
            after = dict(zip(todo, _records_per_workload(db, [tasks[i] for i in todo])))
            # a task whose every candidate failed (a crash; runner timeouts of pathological candidates, seen
            # with a trial or two per task) would build with TVM's default schedule (one thread, no
            # vectorization): it gets further rounds of its own, a few times
            unscheduled = [i for i in todo if after[i] == 0]
            for attempt in range(1, config.retries + 1):
                if not unscheduled:
                    break
                run(unscheduled, len(unscheduled) * rounds, rounds, attempt)
                after.update(zip(unscheduled, _records_per_workload(db, [tasks[i] for i in unscheduled])))
                unscheduled = [i for i in unscheduled if after[i] == 0]
        finally:
            if own_builder:
                builder.close()
        # the run spent the budget these tasks lacked: each has its share now, however the scheduler split
        # it, and is not tuned again for this budget (a killed run never gets here and resumes from
        # records); a task still without a schedule is left out of the ledger, so the next run tunes it
        for i in todo:
            if after[i] > 0:
                ledger[keys[i]] = max(counts[i] + after[i] - records[i], alloc[i])
        atomic_write_json(Path(work_dir) / LEDGER, ledger)
    return TuneReport(len(tasks), len(todo), len(tasks) - len(todo), before, database_records(work_dir),
                      time.perf_counter() - t0, database_digest(work_dir), len(unscheduled))
