"""``agd latency measure``: a generator's latency on this machine, backend by backend (the work is in
:mod:`agd.tuning.compare`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from agd.arch import Genotype
from agd.commands.options import AsJson, Database, Size, default_database, echo_err, parse_size, stdout_to_stderr, tvm_bound
from agd.io import AgdError
from agd.machine import require_precision
from agd.tuning.calibration import network_inputs, random_input
from agd.tuning.quiet import quiet_native_logs
from agd.tuning.targets import resolve_target

app = typer.Typer(name="latency", help="Latency of a generator on this machine, backend by backend.", no_args_is_help=True)


@app.command("measure")
def latency_measure(
    genotype: Path = typer.Argument(..., help="A genotype JSON file."),
    weights: Optional[Path] = typer.Option(None, help="State dict (default: seeded random init)."),
    size: Size = None,
    trials: int = typer.Option(0, min=0, help="Tune first with this many MetaSchedule trials (tvm-tuned row)."),
    database: Database = None,
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
    as_json: AsJson = False,
) -> None:
    """PyTorch eager, torch.compile, ONNX Runtime, TVM untuned and TVM tuned, side by side, on this CPU or GPU."""
    compare = tvm_bound("agd.tuning.compare")
    g = Genotype.load(genotype)
    model = tvm_bound("agd.tuning.artifact").load_generator(g, weights)
    h, w = parse_size(size) or g.config.reference_size
    x = random_input((1, g.config.in_ch, h, w), g.config.scale)
    if target not in ("x86", "cuda"):
        raise AgdError(f"--target {target!r}: latency measure runs on this machine: x86 or cuda "
                       "(arm64 and rpc:// devices: agd compile, which times through RPC)")
    spec = resolve_target(target)
    chosen = _backends(precision, backends)
    cfg = compare.CompareConfig(backends=chosen, trials=trials, database=database or default_database(target),
                        repeats=repeats, threads=threads, calibration=_calibration(chosen, calibration, g, (h, w)),
                        data_range=1.0 if g.config.scale > 1 else 2.0)
    with stdout_to_stderr(as_json), quiet_native_logs():
        rows = compare.compare(model, x, spec, cfg, progress=echo_err)
    if as_json:
        typer.echo(json.dumps({"genotype": str(genotype), "input": list(x.shape), "rows": rows}, indent=1))
        return
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
    precisions = tuple(p.strip() for p in precision.split(",") if p.strip())
    chosen = tvm_bound("agd.tuning.compare").backends_for(precisions)
    for p in precisions:
        require_precision(p)
    if backends:
        chosen = tuple(b.strip() for b in backends.split(",") if b.strip())
    return chosen


def _calibration(backends: tuple[str, ...], source: str, genotype, size: tuple[int, int]) -> tuple:
    """int8 rows' calibration inputs at the measured size (not the measured input), or () without int8."""
    if not any(tvm_bound("agd.tuning.compare").PRECISION_OF.get(b) == "int8" for b in backends):
        return ()
    return network_inputs(source, size, genotype.config.scale, n=8)
