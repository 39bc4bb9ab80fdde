"""``agd latency-table build|validate``: per-target latency tables of a search space (the work is in
:mod:`agd.tuning.latency_table`; the format in :mod:`agd.cost.latency`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from agd.commands.options import AsJson, Database, Size, default_database, echo_err, parse_size, stdout_to_stderr, tvm_bound
from agd.cost.latency import LatencyTable, check_runtime
from agd.io import AgdError
from agd.space import SearchSpace, get_config
from agd.tuning.quiet import quiet_native_logs
from agd.tuning.targets import resolve_target

app = typer.Typer(name="latency-table", help="Per-target latency tables of a search space (for the search's latency budget).",
                  no_args_is_help=True)


@app.command("build")
def latency_table_build(
    target: str = typer.Option(..., "--target", help="x86, or rpc://HOST:PORT/KEY (a device to time on)."),
    space: str = typer.Option(..., "--space", help="A space preset (translation, sr-x4, translation-tiny, ...)."),
    output: Path = typer.Option(..., "--output", help="The table's JSON file (resumed if it exists)."),
    size: Size = None,
    trials: int = typer.Option(0, min=0, help="MetaSchedule trials per configuration (0: untuned). A "
                               "configuration holds 4-22 tasks (a Winograd residual block the most); with a trial "
                               "or two per task its schedules are chance and entries of neighbouring widths differ "
                               "by 100x and more (BENCHMARKS.md)."),
    trials_per_task: int = typer.Option(0, min=0, help="And at least this many trials for every task of each "
                                        "configuration (the budget grows with the tasks; 8 gave a table within "
                                        "10 % on 29 of 30 networks at 256x256, BENCHMARKS.md)."),
    database: Database = None,
    overhead_networks: int = typer.Option(4, min=1, help="Random networks measured for the overhead term."),
    limit: Optional[int] = typer.Option(None, min=1, help="Measure at most this many configurations this run."),
    emulated: bool = typer.Option(False, help="The RPC device is emulated (qemu): recorded in the provenance."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 or int8: the precision the search's "
                                  "networks will be deployed at."),
    runtime: str = typer.Option("tvm", "--runtime", help="tvm, onnxruntime or inductor (torch.compile): the runtime "
                                "they will be deployed with (onnxruntime and inductor are timed on this machine)."),
) -> None:
    """Measure every (operator, widths, resolution) configuration of a space on a target; resumable."""
    lt = tvm_bound("agd.tuning.latency_table")
    spec = resolve_target(target)
    # onnxruntime and inductor are timed here; TVM on the target (an rpc:// device brings its own instructions)
    check_runtime(runtime, precision, on_this_cpu=runtime != "tvm" or spec.runs_on_this_cpu)
    session = tvm_bound("agd.tuning.artifact").device_for(spec, "timing a latency table") if runtime == "tvm" else None
    if runtime != "tvm" and not spec.runs_on_this_cpu:
        raise AgdError(f"--runtime {runtime}: timed on this machine (--target x86), not {spec.name}")
    if output.exists():
        table = LatencyTable.load(output)
        if table.target != spec.name:
            raise AgdError(f"latency table {output}: it is for target {table.target}, not {spec.name}")
        table.check_for(precision, runtime, f"latency table {output}")
    else:
        table = LatencyTable(spec.name, spec.tvm_target, precision=precision, runtime=runtime)
    sp = SearchSpace(get_config(space))
    hw = parse_size(size)
    cfg = lt.TableBuildConfig(trials=trials, trials_per_task=trials_per_task, database=database or default_database(spec.name),
                              overhead_networks=overhead_networks, emulated=emulated, precision=precision, runtime=runtime)
    with quiet_native_logs():
        lt.build_table(table, sp, spec, hw, cfg, path=output, progress=echo_err, session=session, limit=limit)
    left = len([c for c in table.missing(sp, hw) if c[2] != "identity"])
    typer.echo(f"wrote {output} ({table.describe()}): {len(table.entries)} entries" + (f", {left} configurations left (run again to resume)"
                                                                   if left else ", complete"))


@app.command("validate")
def latency_table_validate(
    target: str = typer.Option(..., "--target", help="The table's target."),
    table_path: Path = typer.Option(..., "--table", help="The latency table JSON."),
    space: str = typer.Option(..., "--space", help="The space preset the table was built for."),
    size: Size = None,
    n: int = typer.Option(30, "-n", min=2, help="Random derived generators to measure."),
    trials: int = typer.Option(0, min=0, help="Tune each network first (use the table's trials)."),
    trials_per_task: int = typer.Option(0, min=0, help="And at least this many trials for every task of each network."),
    database: Database = None,
    seed: int = typer.Option(7, help="Seed of the random genotypes."),
    as_json: AsJson = False,
) -> None:
    """Predicted vs measured latency of N random derived generators (goal: >= 90 % within 10 %, rho >= 0.95)."""
    lt = tvm_bound("agd.tuning.latency_table")
    spec = resolve_target(target)
    table = LatencyTable.load(table_path)
    if table.target != spec.name:
        raise AgdError(f"latency table {table_path}: it is for target {table.target}, not {spec.name}")
    session = tvm_bound("agd.tuning.artifact").device_for(spec, "validating a latency table") if table.runtime == "tvm" else None
    cfg = lt.TableBuildConfig(trials=trials, trials_per_task=trials_per_task, database=database or default_database(spec.name),
                              precision=table.precision, runtime=table.runtime)
    with stdout_to_stderr(as_json):
        rep = lt.validate_table(table, SearchSpace(get_config(space)), spec, parse_size(size), cfg, n=n, seed=seed, session=session,
                             progress=echo_err)
    if as_json:
        typer.echo(json.dumps(rep, indent=1))
        return
    typer.echo(f"{rep['networks']} networks: {100 * rep['within_10pct']:.0f} % within ±10 %, Spearman rho "
               f"{rep['spearman_rho']:.3f}, mean |error| {100 * rep['mape']:.1f} % "
               f"({'meets' if rep['meets_goal'] else 'misses'} the goal: >= 90 % and rho >= 0.95)")
