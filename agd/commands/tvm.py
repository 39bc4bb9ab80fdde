"""``agd compile``, ``agd latency measure``, ``agd latency-table build|validate``: TVM compilation,
tuning and latency (implementation in :mod:`agd.tuning`; heavy imports stay inside the commands)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from agd.io import AgdError
from agd.tuning.artifact import DEFAULT_TRIALS

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
    trials: int = typer.Option(DEFAULT_TRIALS, "--trials", min=0, help="MetaSchedule trials for this model: the default "
                               "tunes within about 10 minutes on 2 cores, reusing the database (a second compile of "
                               "the same network spends none); 0 builds untuned and says how much slower than eager."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or int8 (post-training quantization: "
                                  "activations per tensor, s8 weights per channel; x86 AVX512-VNNI, or aarch64 sdot "
                                  "through rpc:// with --trials 0)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="int8: folder of training images to "
                                              "calibrate on, or 'builtin' (agd's built-in training samples)."),
    quality_images: str = typer.Option("builtin", "--quality-images", help="int8: folder of held-out images for the "
                                       "quality check, or 'builtin' (the built-in held-out samples)."),
    min_psnr: float = typer.Option(40.0, "--min-psnr", help="int8: least PSNR (dB) of the build to the fp32 "
                                   "network on the held-out images; a build under it is refused."),
    size: Optional[str] = typer.Option(None, help="Input HxW (default: the space's reference size)."),
    database: Optional[Path] = typer.Option(None, help="Tuning database folder (default tvm-db/<target>)."),
    atol: float = typer.Option(1e-4, help="Numerical check (fp32): max |TVM - PyTorch| allowed."),
    cuda_arch: Optional[str] = typer.Option(None, help="CUDA arch for --target cuda, e.g. sm_90."),
    emulated: bool = typer.Option(False, help="The RPC device is emulated (qemu): label its timings so."),
) -> None:
    """Compile a derived generator with TVM for a target, tuned, checked against PyTorch and timed against eager."""
    from agd.machine import PRECISIONS, require_precision
    from agd.space import Genotype
    from agd.tuning.artifact import CompileConfig, compile_genotype
    from agd.tuning.calibration import network_inputs
    from agd.tuning.quiet import quiet_native_logs
    from agd.tuning.targets import resolve_target

    if precision not in PRECISIONS:
        raise AgdError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    spec = resolve_target(target, cuda_arch=cuda_arch)
    if spec.name == "x86":  # the build runs on this CPU: it must have the precision's instructions
        require_precision(precision)
    db = database or default_database(spec.name)
    hw = parse_size(size)
    calib: tuple = ()
    held: tuple = ()
    if precision == "int8":
        if calibration is None:
            raise AgdError("--precision int8: no calibration images (give --calibration DIR, or --calibration builtin "
                           "for agd's built-in training samples)")
        g = Genotype.load(genotype)
        in_hw = hw or g.config.reference_size
        calib = network_inputs(calibration, in_hw, g.config.scale, n=8)
        held = network_inputs(quality_images, in_hw, g.config.scale, n=4, held_out=True, seed=1)
    cfg = CompileConfig(size=hw, trials=trials, database=db, atol=atol, emulated=emulated, precision=precision,
                        calibration=calib, quality_inputs=held, min_psnr_db=min_psnr)
    with quiet_native_logs() as quiet:
        m = compile_genotype(genotype, spec, output, cfg, weights)
    if quiet.summary():
        _echo(quiet.summary())
    lat = f"{m['latency_ms']:.3f} ms{' (EMULATED, not device speed)' if m['latency_emulated'] else ''}"
    err = f"max abs error {m['max_abs_error']:.2e}"
    if m["quality"]:
        err += f", {m['quality']['psnr_to_fp32_db']:.1f} dB to fp32 on {m['quality']['images']} held-out images"
    typer.echo(f"wrote {output}: target {spec.name}, {m['precision']}, input {'x'.join(map(str, m['input_shape']))}, "
               f"{'tuned' if m['tuning']['tuned'] else 'untuned'}, latency {lat}, {err}")
    v = m["vs_eager"]
    if v["compared"]:
        typer.echo(f"against eager PyTorch here ({v['threads']} threads, {v['method']}): TVM {v['tvm_ms']:.2f} ms, eager "
                   f"{v['eager_ms']:.2f} ms, {v['speedup']:.2f}x")
        if v["slower_than_eager"]:
            hint = (f"tune it: --trials {DEFAULT_TRIALS}" if not m["tuning"]["tuned"]
                    else "more --trials, or --precision int8; `agd bench deploy` compares the runtimes")
            _echo(f"warning: this artifact is {1 / v['speedup']:.1f}x SLOWER than eager PyTorch on this machine "
                  f"({v['tvm_ms']:.1f} vs {v['eager_ms']:.1f} ms; recorded in its manifest); {hint}")
    else:
        typer.echo(f"not compared with eager PyTorch: {v['why']}")


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
    precision: str = typer.Option("fp32", "--precision", help="Comma-separated precisions whose backends are "
                                  "measured: fp32, bf16, int8 (each refused where this CPU lacks its instructions)."),
    backends: Optional[str] = typer.Option(None, help="Comma-separated backends (default: every backend of "
                                           "--precision; fp32: eager, torch.compile, onnxruntime, tvm-untuned, "
                                           "tvm-tuned; bf16: eager-bf16, torch.compile-bf16, tvm-bf16; int8: "
                                           "onnxruntime-int8, pt2e-int8, tvm-int8, tvm-int8-tuned)."),
    calibration: str = typer.Option("builtin", help="int8 rows: folder of training images to calibrate on, or "
                                    "'builtin' (agd's built-in training samples)."),
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
    from agd.tuning.calibration import random_input

    x = random_input((1, g.config.in_ch, h, w), g.config.scale)
    if target not in ("x86", "cuda"):
        raise AgdError(f"--target {target!r}: latency measure runs on this machine: x86 or cuda "
                       "(arm64 and rpc:// devices: agd compile, which times through RPC)")
    spec = resolve_target(target)
    chosen = _backends(precision, backends)
    cfg = CompareConfig(backends=chosen, trials=trials, database=database or default_database(target),
                        repeats=repeats, threads=threads, calibration=_calibration(chosen, calibration, g, (h, w)),
                        data_range=1.0 if g.config.scale > 1 else 2.0)
    from agd.tuning.quiet import quiet_native_logs

    with _stdout_to_stderr(as_json), quiet_native_logs():
        rows = compare(model, x, spec, cfg, progress=_echo)
    if as_json:
        typer.echo(json.dumps({"genotype": str(genotype), "input": list(x.shape), "rows": rows}, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    base = next((r["median_ms"] for r in rows if r["backend"] == "eager" and r["ok"]), None)
    table = Table(title=f"{genotype} at {h}x{w}, batch 1, target {target}", title_justify="left")
    for col in ("backend", "precision", "median ms", "vs eager", "max abs error", "PSNR to fp32", "note"):
        table.add_column(col)
    for r in rows:
        if r["ok"]:
            table.add_row(r["backend"], r["precision"], f"{r['median_ms']:.3f}",
                          f"{base / r['median_ms']:.2f}x" if base else "-", f"{r['max_abs_error']:.1e}",
                          f"{r['psnr_to_fp32_db']:.1f} dB", r["note"])
        else:
            table.add_row(r["backend"], r["precision"], "-", "-", "-", "-", r["note"])
    Console().print(table)


def _backends(precision: str, backends: Optional[str]) -> tuple[str, ...]:
    """The backends to measure: those named, else every backend of the precisions (refused, naming the
    missing extension, where this CPU lacks a precision's instructions)."""
    from agd.machine import require_precision
    from agd.tuning.compare import backends_for

    precisions = tuple(p.strip() for p in precision.split(",") if p.strip())
    chosen = backends_for(precisions)
    for p in precisions:
        require_precision(p)
    if backends:
        chosen = tuple(b.strip() for b in backends.split(",") if b.strip())
    return chosen


def _calibration(backends: tuple[str, ...], source: str, genotype, size: tuple[int, int]) -> tuple:
    """int8 rows' calibration inputs at the measured size (not the measured input), or () without int8."""
    from agd.tuning.calibration import network_inputs
    from agd.tuning.compare import PRECISION_OF

    if not any(PRECISION_OF.get(b) == "int8" for b in backends):
        return ()

    return network_inputs(source, size, genotype.config.scale, n=8)


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
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 or int8: the precision the search's "
                                  "networks will be deployed at."),
    runtime: str = typer.Option("tvm", "--runtime", help="tvm, onnxruntime or inductor (torch.compile): the runtime "
                                "they will be deployed with (onnxruntime and inductor are timed on this machine)."),
) -> None:
    """Measure every (operator, widths, resolution) configuration of a space on a target; resumable."""
    from agd.tuning.artifact import device_for
    from agd.tuning.latency_table import LatencyTable, TableBuildConfig, build_table, check_runtime
    from agd.tuning.targets import resolve_target

    check_runtime(runtime, precision)
    spec = resolve_target(target)
    session = device_for(spec, "timing a latency table") if runtime == "tvm" else None
    if runtime != "tvm" and spec.name != "x86":
        raise AgdError(f"--runtime {runtime}: timed on this machine (--target x86), not {spec.name}")
    if output.exists():
        table = LatencyTable.load(output)
        if table.target != spec.name:
            raise AgdError(f"latency table {output}: it is for target {table.target}, not {spec.name}")
        table.check_for(precision, runtime, f"latency table {output}")
    else:
        table = LatencyTable(spec.name, spec.tvm_target, precision=precision, runtime=runtime)
    sp = _space(space)
    hw = parse_size(size)
    cfg = TableBuildConfig(trials=trials, trials_per_task=trials_per_task, database=database or default_database(spec.name),
                           overhead_networks=overhead_networks, emulated=emulated, precision=precision, runtime=runtime)
    from agd.tuning.quiet import quiet_native_logs

    with quiet_native_logs():
        build_table(table, sp, spec, hw, cfg, path=output, progress=_echo, session=session, limit=limit)
    left = len([c for c in table.missing(sp, hw) if c[2] != "identity"])
    typer.echo(f"wrote {output} ({table.describe()}): {len(table.entries)} entries" + (f", {left} configurations left (run again to resume)"
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
    session = device_for(spec, "validating a latency table") if table.runtime == "tvm" else None
    cfg = TableBuildConfig(trials=trials, trials_per_task=trials_per_task, database=database or default_database(spec.name),
                           precision=table.precision, runtime=table.runtime)
    with _stdout_to_stderr(as_json):
        rep = validate_table(table, _space(space), spec, parse_size(size), cfg, n=n, seed=seed, session=session,
                             progress=_echo)
    if as_json:
        typer.echo(json.dumps(rep, indent=1))
        return
    typer.echo(f"{rep['networks']} networks: {100 * rep['within_10pct']:.0f} % within ±10 %, Spearman rho "
               f"{rep['spearman_rho']:.3f}, mean |error| {100 * rep['mape']:.1f} % "
               f"({'meets' if rep['meets_goal'] else 'misses'} the goal: >= 90 % and rho >= 0.95)")
