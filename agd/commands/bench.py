"""``agd bench``: benchmarks that print a table (and optionally JSON) on the machine at hand.

``agd bench kernels --suite triton`` times the fused mixed-layer epilogue against eager PyTorch and
torch.compile of the same reference over both supernets' real shapes, plus a whole supernet search step
with the fused epilogue on and off. ``--suite csrc`` runs the C++/CUDA suite (``agd.bench.csrc``,
``run_csrc_suite(device, quick, compile)``). Figures on CPU are checks that the command works, not
measurements of the kernels (Triton runs on CPU only in its interpreter).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console
from rich.table import Table

from agd.bench.csrc import run_csrc_suite
from agd.bench.kernels import DTYPES, run_epilogue_suite, run_search_step
from agd.commands.options import parse_size, tvm_bound
from agd.io import AgdError, atomic_write_json
from agd.machine import require_precision
from agd.tuning.quiet import quiet_native_logs

app = typer.Typer(name="bench", help="Benchmarks: kernels against eager PyTorch and torch.compile.", no_args_is_help=True)

SUITES = ("triton", "csrc", "all")


def parse_dtypes(spec: str) -> tuple:
    """``float32,bfloat16`` → torch dtypes of the Triton suite; AgdError naming a bad entry."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in DTYPES]
    if bad or not names:
        raise AgdError(f"--dtypes {spec!r}: {'unknown ' + ', '.join(map(repr, bad)) if bad else 'empty'}; "
                       f"choose from {', '.join(DTYPES)}")
    return tuple(DTYPES[n] for n in names)


def _progress(row: dict) -> None:
    """One line per finished row on stderr (a long GPU run shows its figures before the table)."""
    typer.echo("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in ("suite", "device")), err=True)


def collect(suite: str, device: str, quick: bool, dtypes: str = "float32,bfloat16", search_step: bool = True,
            compile_rows: bool | None = None, progress: bool = False) -> list[dict]:
    """Rows of the requested suite(s) on ``device`` (``dtypes``: the Triton suite's, comma-separated;
    ``search_step``: with the Triton suite's whole search step; ``compile_rows``: the csrc suite's
    torch.compile rows, None for its default)."""
    if suite not in SUITES:
        raise AgdError(f"--suite {suite!r}: choose one of {', '.join(SUITES)}")
    dts = parse_dtypes(dtypes) if suite in ("triton", "all") else ()
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise AgdError(f"--device {device!r}: not a torch device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AgdError(f"--device {device}: no CUDA device is visible to torch {torch.__version__}")
    rows: list[dict] = []
    if suite in ("triton", "all"):
        rows += run_epilogue_suite(str(dev), quick, dts, _progress if progress else None)
        if search_step:
            rows += run_search_step(str(dev), quick, _progress if progress else None)
    if suite in ("csrc", "all"):
        rows += list(run_csrc_suite(str(dev), quick, compile_rows))
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return "-" if v is None else str(v)


def print_table(rows: list[dict]) -> None:
    con = Console(width=max(Console().width, 220))  # wide tables: do not squeeze columns to "…"
    # columns shared by every row of a table go into its title (all of them are in --json)
    hidden = ("suite", "device", "fused", "bytes", "copy_gbs")
    groups: dict[tuple[str, ...], list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r), []).append(r)
    for cols, rs in groups.items():
        shared = [f"{c}={_fmt(rs[0][c])}" for c in hidden if c in cols]
        con.print(", ".join(shared), highlight=False)
        table = Table()
        shown = [c for c in cols if c not in hidden]
        for c in shown:
            table.add_column(c, no_wrap=True)
        for r in rs:
            table.add_row(*(_fmt(r[c]) for c in shown))
        con.print(table)


@app.command("kernels")
def kernels(
    suite: str = typer.Option("triton", help="triton (fused epilogue + search step), csrc (C++/CUDA ops) or all."),
    device: Optional[str] = typer.Option(None, help="torch device (default: cuda if visible, else cpu)."),
    quick: bool = typer.Option(False, help="One workload per space and a smaller search step."),
    dtypes: str = typer.Option("float32,bfloat16", help="Triton suite dtypes, comma-separated (float32, bfloat16, float16)."),
    search_step: bool = typer.Option(True, help="Triton suite: also time a whole supernet search step."),
    compile_rows: Optional[bool] = typer.Option(None, "--compile-rows/--no-compile-rows",
                                                help="csrc suite: also time torch.compile (default: unless --quick)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the rows to this JSON file."),
    threads: Optional[int] = typer.Option(None, min=1, help="torch intra-op threads (default: torch's, one per core)."),
) -> None:
    """Time the kernels against eager PyTorch and torch.compile; print one table per row kind."""
    if threads is not None:
        torch.set_num_threads(threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    how = ("eager and agd calls alternate" if torch.device(device).type == "cpu"
           else "timed with triton.testing.do_bench, GPU time from torch.profiler")
    typer.echo(f"device {device}, {torch.get_num_threads()} intra-op threads; {how}")
    rows = collect(suite, device, quick, dtypes, search_step, compile_rows, progress=True)
    if torch.device(device).type == "cpu" and suite != "csrc":
        typer.echo("note: CPU run: a check that the benchmark works; the Triton kernels are not timed here "
                   "(they run on CPU only in the interpreter) and CPU figures say nothing about GPU speed.")
    print_table(rows)
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=1))
        typer.echo(f"wrote {json_out}")


@app.command("deploy")
def bench_deploy_cmd(
    genotypes: Optional[list[Path]] = typer.Argument(None, help="Genotype files (default: the two examples/)."),
    size: Optional[str] = typer.Option(None, help="Input HxW (default: each space's reference size)."),
    trials: int = typer.Option(0, min=0, help="MetaSchedule trials per student for the tvm-tuned row."),
    database: Path = typer.Option(Path("tvm-db/x86"), help="Tuning database (reused across runs)."),
    repeats: int = typer.Option(10, min=1, help="Timed calls per backend."),
    threads: Optional[int] = typer.Option(None, min=1, help="Intra-op threads for torch and ONNX Runtime."),
    output: Optional[Path] = typer.Option(None, help="Also write the rows to this JSON file."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Comma-separated precisions (default: every "
                                            "one this CPU has instructions for, of fp32, bf16, int8)."),
    calibration: str = typer.Option("builtin", help="int8 rows: folder of training images, or 'builtin'."),
    student: Optional[list[Path]] = typer.Option(None, "--student", help="Also a trained student: an `agd compress` "
                                                 "run folder (its train/genotype.json and train/student.safetensors)."),
) -> None:
    """Deployment benchmark on this CPU, per precision: eager, torch.compile, ONNX Runtime, PT2E, TVM untuned and tuned."""
    deploy = tvm_bound("agd.bench.deploy")
    paths = list(genotypes) if genotypes else [Path(p) for p in deploy.DEFAULT_STUDENTS]
    weights: dict[Path, Path] = {}
    for run in student or []:
        g, w = run / "train" / "genotype.json", run / "train" / "student.safetensors"
        if not (g.is_file() and w.is_file()):
            raise AgdError(f"--student {run}: not an agd compress run folder (no train/genotype.json and "
                           "train/student.safetensors)")
        paths.append(g)
        weights[g] = w
    for p in paths:
        if not p.is_file():
            raise AgdError(f"genotype {p}: no such file")
    precisions = tuple(p.strip() for p in precision.split(",") if p.strip()) if precision else None
    for p in precisions or ():
        require_precision(p)
    with quiet_native_logs():
        res = deploy.bench_deploy(paths, parse_size(size), trials, database, repeats, threads,
                           progress=lambda m: typer.echo(m, err=True), precisions=precisions, calibration=calibration,
                           weights=weights)
    if output is not None:
        atomic_write_json(output, res)
    for s in res["students"]:
        eager = next((r["median_ms"] for r in s["rows"] if r["backend"] == "eager" and r["ok"]), None)
        typer.echo(f"{s['genotype']} {'x'.join(map(str, s['input']))}"
                   f"{' (trained: ' + s['weights'] + ')' if s['weights'] else ' (random init)'}:")
        for r in s["rows"]:
            if r["ok"]:
                typer.echo(f"  {r['backend']:18} {r['precision']:4} {r['median_ms']:9.3f} ms  "
                           f"{eager / r['median_ms'] if eager else 0:5.2f}x eager  err {r['max_abs_error']:.1e}  "
                           f"{r['psnr_to_fp32_db']:5.1f} dB to fp32  {r['note']}")
            else:
                typer.echo(f"  {r['backend']:18} {r['precision']:4}         -     {r['note']}")
    typer.echo(json.dumps({"load_avg_start": res["load_avg_start"], "load_avg_end": res["load_avg_end"]}))
