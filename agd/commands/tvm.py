"""``agd compile``, ``agd latency measure``, ``agd latency-table build|validate``: TVM compilation,
tuning and latency (implementation in :mod:`agd.tuning`; heavy imports stay inside the commands)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from agd.io import AgdError

latency_app = typer.Typer(help="Latency of a generator on this machine, backend by backend.", no_args_is_help=True)
latency_table_app = typer.Typer(help="Per-target latency tables of a search space (for the search's latency budget).",
                                no_args_is_help=True)


def parse_size(size: Optional[str], option: str = "--size") -> Optional[tuple[int, int]]:
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise AgdError(f"{option} {size!r}: expected HxW, e.g. 256x256") from None
    return h, w


def default_database(target: str) -> Path:
    """``tvm-db/<target>`` in the working folder: one persistent MetaSchedule database per target."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in target)
    return Path("tvm-db") / slug


def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


def compile_cmd(
    genotype: Path = typer.Argument(..., help="A genotype JSON file (see examples/)."),
    target: str = typer.Option(..., "--target", help="x86, arm64, cuda or rpc://HOST:PORT/KEY."),
    output: Path = typer.Option(..., "--output", help="Artifact folder (model.so, params.bin, manifest.json)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="State dict of the derived generator; "
                                           "without it a seeded random init is used (latency work) and the manifest says so."),
    trials: int = typer.Option(0, "--trials", min=0, help="MetaSchedule trials for this model (0: no tuning)."),
    size: Optional[str] = typer.Option(None, help="Input HxW (default: the space's reference size)."),
    database: Optional[Path] = typer.Option(None, help="Tuning database folder (default tvm-db/<target>)."),
    atol: float = typer.Option(1e-4, help="Numerical check: max |TVM - PyTorch| allowed."),
    cuda_arch: Optional[str] = typer.Option(None, help="CUDA arch for --target cuda, e.g. sm_90."),
    emulated: bool = typer.Option(False, help="The RPC device is emulated (qemu): label its timings so."),
) -> None:
    """Compile a derived generator with TVM for a target, check it against PyTorch, write the artifact."""
    from agd.tuning.artifact import CompileConfig, compile_genotype
    from agd.tuning.targets import resolve_target

    spec = resolve_target(target, cuda_arch=cuda_arch)
    db = database or default_database(spec.name)
    cfg = CompileConfig(size=parse_size(size), trials=trials, database=db, atol=atol, emulated=emulated)
    m = compile_genotype(genotype, spec, output, cfg, weights)
    lat = f"{m['latency_ms']:.3f} ms{' (EMULATED, not device speed)' if m['latency_emulated'] else ''}"
    typer.echo(f"wrote {output}: target {spec.name}, input {'x'.join(map(str, m['input_shape']))}, "
               f"{'tuned' if m['tuning']['tuned'] else 'untuned'}, latency {lat}, max abs error {m['max_abs_error']:.2e}")


def _stdout_to_stderr(active: bool):
    """With --json, stdout carries the JSON alone: MetaSchedule's tuning log, whose console handler it
    binds to the current sys.stdout when tuning starts, goes to stderr instead."""
    import contextlib
    import sys

    return contextlib.redirect_stdout(sys.stderr) if active else contextlib.nullcontext()


@latency_app.command("measure")
def latency_measure(
    genotype: Path = typer.Argument(..., help="A genotype JSON file."),
    weights: Optional[Path] = typer.Option(None, help="State dict (default: seeded random init)."),
    size: Optional[str] = typer.Option(None, help="Input HxW (default: the space's reference size)."),
    trials: int = typer.Option(0, min=0, help="Tune first with this many MetaSchedule trials (tvm-tuned row)."),
    database: Optional[Path] = typer.Option(None, help="Tuning database (default tvm-db/<target>)."),
    target: str = typer.Option("x86", "--target", help="x86 (this CPU) or cuda (this machine's GPU)."),
    backends: str = typer.Option(",".join(("eager", "torch.compile", "onnxruntime", "tvm-untuned", "tvm-tuned")),
                                 help="Comma-separated backends."),
    repeats: int = typer.Option(10, min=1, help="Timed calls per backend (median reported)."),
    threads: Optional[int] = typer.Option(None, min=1, help="Intra-op threads for torch and ONNX Runtime."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """PyTorch eager, torch.compile, ONNX Runtime, TVM untuned and TVM tuned, side by side, on this CPU or GPU."""
    import torch

    from agd.space import Genotype
    from agd.tuning.artifact import load_generator
    from agd.tuning.compare import CompareConfig, compare
    from agd.tuning.targets import resolve_target

    g = Genotype.load(genotype)
    model = load_generator(g, weights)
    h, w = parse_size(size) or g.config.reference_size
    x = torch.rand(1, g.config.in_ch, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
    if target not in ("x86", "cuda"):
        raise AgdError(f"--target {target!r}: latency measure runs on this machine: x86 or cuda "
                       "(arm64 and rpc:// devices: agd compile, which times through RPC)")
    spec = resolve_target(target)
    cfg = CompareConfig(backends=tuple(b.strip() for b in backends.split(",") if b.strip()), trials=trials,
                        database=database or default_database(target), repeats=repeats, threads=threads)
    with _stdout_to_stderr(as_json):
        rows = compare(model, x, spec, cfg, progress=_echo)
    if as_json:
        typer.echo(json.dumps({"genotype": str(genotype), "input": list(x.shape), "rows": rows}, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    base = next((r["median_ms"] for r in rows if r["backend"] == "eager" and r["ok"]), None)
    table = Table(title=f"{genotype} at {h}x{w}, batch 1, target {target}", title_justify="left")
    for col in ("backend", "median ms", "vs eager", "max abs error", "note"):
        table.add_column(col)
    for r in rows:
        if r["ok"]:
            table.add_row(r["backend"], f"{r['median_ms']:.3f}", f"{base / r['median_ms']:.2f}x" if base else "-",
                          f"{r['max_abs_error']:.1e}", r["note"])
        else:
            table.add_row(r["backend"], "-", "-", "-", r["note"])
    Console().print(table)


def _space(space: str):
    from agd.space import SearchSpace, get_config

    return SearchSpace(get_config(space))


@latency_table_app.command("build")
def latency_table_build(
    target: str = typer.Option(..., "--target", help="x86, or rpc://HOST:PORT/KEY (a device to time on)."),
    space: str = typer.Option(..., "--space", help="A space preset (translation, sr-x4, translation-tiny, ...)."),
    output: Path = typer.Option(..., "--output", help="The table's JSON file (resumed if it exists)."),
    size: Optional[str] = typer.Option(None, help="Input HxW (default: the space's reference size)."),
    trials: int = typer.Option(0, min=0, help="MetaSchedule trials per configuration (0: untuned). A "
                               "configuration holds 4-22 tasks (a Winograd residual block the most); with a trial "
                               "or two per task its schedules are chance and entries of neighbouring widths differ "
                               "by 100x and more (BENCHMARKS.md)."),
    trials_per_task: int = typer.Option(0, min=0, help="And at least this many trials for every task of each "
                                        "configuration (the budget grows with the tasks; 8 gave a table within "
                                        "10 % on 29 of 30 networks at 256x256, BENCHMARKS.md)."),
    database: Optional[Path] = typer.Option(None, help="Tuning database (default tvm-db/<target>)."),
    overhead_networks: int = typer.Option(4, min=1, help="Random networks measured for the overhead term."),
    limit: Optional[int] = typer.Option(None, min=1, help="Measure at most this many configurations this run."),
    emulated: bool = typer.Option(False, help="The RPC device is emulated (qemu): recorded in the provenance."),
) -> None:
    """Measure every (operator, widths, resolution) configuration of a space on a target; resumable."""
    from agd.tuning.artifact import device_for
    from agd.tuning.latency_table import LatencyTable, TableBuildConfig, build_table
    from agd.tuning.targets import resolve_target

    spec = resolve_target(target)
    session = device_for(spec, "timing a latency table")
    if output.exists():
        table = LatencyTable.load(output)
        if table.target != spec.name:
            raise AgdError(f"latency table {output}: it is for target {table.target}, not {spec.name}")
    else:
        table = LatencyTable(spec.name, spec.tvm_target)
    sp = _space(space)
    hw = parse_size(size)
    cfg = TableBuildConfig(trials=trials, trials_per_task=trials_per_task, database=database or default_database(spec.name),
                           overhead_networks=overhead_networks, emulated=emulated)
    build_table(table, sp, spec, hw, cfg, path=output, progress=_echo, session=session, limit=limit)
    left = len([c for c in table.missing(sp, hw) if c[2] != "identity"])
    typer.echo(f"wrote {output}: {len(table.entries)} entries" + (f", {left} configurations left (run again to resume)"
                                                                   if left else ", complete"))


@latency_table_app.command("validate")
def latency_table_validate(
    target: str = typer.Option(..., "--target", help="The table's target."),
    table_path: Path = typer.Option(..., "--table", help="The latency table JSON."),
    space: str = typer.Option(..., "--space", help="The space preset the table was built for."),
    size: Optional[str] = typer.Option(None, help="Input HxW (default: the space's reference size)."),
    n: int = typer.Option(30, "-n", min=2, help="Random derived generators to measure."),
    trials: int = typer.Option(0, min=0, help="Tune each network first (use the table's trials)."),
    trials_per_task: int = typer.Option(0, min=0, help="And at least this many trials for every task of each network."),
    database: Optional[Path] = typer.Option(None, help="Tuning database (default tvm-db/<target>)."),
    seed: int = typer.Option(7, help="Seed of the random genotypes."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Predicted vs measured latency of N random derived generators (goal: >= 90 % within 10 %, rho >= 0.95)."""
    from agd.tuning.artifact import device_for
    from agd.tuning.latency_table import LatencyTable, TableBuildConfig, validate_table
    from agd.tuning.targets import resolve_target

    spec = resolve_target(target)
    table = LatencyTable.load(table_path)
    if table.target != spec.name:
        raise AgdError(f"latency table {table_path}: it is for target {table.target}, not {spec.name}")
    session = device_for(spec, "validating a latency table")
    cfg = TableBuildConfig(trials=trials, trials_per_task=trials_per_task, database=database or default_database(spec.name))
    with _stdout_to_stderr(as_json):
        rep = validate_table(table, _space(space), spec, parse_size(size), cfg, n=n, seed=seed, session=session,
                             progress=_echo)
    if as_json:
        typer.echo(json.dumps(rep, indent=1))
        return
    typer.echo(f"{rep['networks']} networks: {100 * rep['within_10pct']:.0f} % within ±10 %, Spearman rho "
               f"{rep['spearman_rho']:.3f}, mean |error| {100 * rep['mape']:.1f} % "
               f"({'meets' if rep['meets_goal'] else 'misses'} the goal: >= 90 % and rho >= 0.95)")
