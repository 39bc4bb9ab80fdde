"""``agd bench``: benchmarks that print a table (and optionally JSON) on the machine at hand.

``agd bench kernels --suite triton`` times the fused mixed-layer epilogue against eager PyTorch and
torch.compile of the same reference over both supernets' real shapes, plus a whole supernet search step
with the fused epilogue on and off. ``--suite csrc`` runs the C++/CUDA suite (``agd.commands.bench_csrc``,
``run_csrc_suite(device, quick, compile)``). Figures on CPU are checks that the command works, not
measurements of the kernels (Triton runs on CPU only in its interpreter).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from agd.io import AgdError

bench_app = typer.Typer(help="Benchmarks: kernels against eager PyTorch and torch.compile.", no_args_is_help=True)

SUITES = ("triton", "csrc", "all")


def _csrc_suite():
    try:
        from agd.commands.bench_csrc import run_csrc_suite
    except ImportError as e:
        raise AgdError(f"--suite csrc: the C++/CUDA benchmark suite (agd/commands/bench_csrc.py) is not available: {e}") from None
    return run_csrc_suite


def parse_dtypes(spec: str) -> tuple:
    """``float32,bfloat16`` → torch dtypes of the Triton suite; AgdError naming a bad entry."""
    from agd.kernels.bench import DTYPES

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
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise AgdError(f"--device {device!r}: not a torch device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AgdError(f"--device {device}: no CUDA device is visible to torch {torch.__version__}")
    rows: list[dict] = []
    csrc = _csrc_suite() if suite in ("csrc", "all") else None  # fail before the long triton suite runs
    if suite in ("triton", "all"):
        from agd.kernels.bench import run_epilogue_suite, run_search_step

        rows += run_epilogue_suite(str(dev), quick, dts, _progress if progress else None)
        if search_step:
            rows += run_search_step(str(dev), quick, _progress if progress else None)
    if csrc is not None:
        rows += list(csrc(str(dev), quick, compile_rows))
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return "-" if v is None else str(v)


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

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


@bench_app.command("kernels")
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
    import torch

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
