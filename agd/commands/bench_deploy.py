"""``agd bench deploy``: a real derived student of each space at batch 1 on this CPU, PyTorch eager,
torch.compile, ONNX Runtime, TVM untuned and TVM tuned (trials stated), written as JSON rows."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Optional

import typer

from agd.io import AgdError, atomic_write_json

DEFAULT_STUDENTS = ("examples/translation_r9_small.json", "examples/sr_x4_small.json")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_deploy(genotypes: list[Path], size: Optional[tuple[int, int]], trials: int, database: Path,
                 repeats: int, threads: Optional[int], progress=None, backends: Optional[tuple[str, ...]] = None) -> dict:
    import os

    import torch

    from agd.space import Genotype
    from agd.tuning.artifact import load_generator
    from agd.tuning.compare import CompareConfig, compare
    from agd.tuning.targets import resolve_target

    spec = resolve_target("x86")
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": f"{cpu_name()}, {os.cpu_count()} logical cores",
           "torch_threads": threads or torch.get_num_threads(), "target": spec.tvm_target,
           "load_avg_start": os.getloadavg(), "trials": trials, "database": str(database), "students": []}
    for path in genotypes:
        g = Genotype.load(path)
        h, w = size or g.config.reference_size
        x = torch.rand(1, g.config.in_ch, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
        if progress:
            progress(f"{path} at {h}x{w}")
        rows = compare(load_generator(g, None), x, spec, CompareConfig(trials=trials, database=database, repeats=repeats,
                                                                 threads=threads, **({"backends": backends} if backends else {})), progress=progress)
        out["students"].append({"genotype": str(path), "input": list(x.shape), "rows": rows})
    out["load_avg_end"] = os.getloadavg()
    return out


def bench_deploy_cmd(
    genotypes: Optional[list[Path]] = typer.Argument(None, help="Genotype files (default: the two examples/)."),
    size: Optional[str] = typer.Option(None, help="Input HxW (default: each space's reference size)."),
    trials: int = typer.Option(0, min=0, help="MetaSchedule trials per student for the tvm-tuned row."),
    database: Path = typer.Option(Path("tvm-db/x86"), help="Tuning database (reused across runs)."),
    repeats: int = typer.Option(10, min=1, help="Timed calls per backend."),
    threads: Optional[int] = typer.Option(None, min=1, help="Intra-op threads for torch and ONNX Runtime."),
    output: Optional[Path] = typer.Option(None, help="Also write the rows to this JSON file."),
) -> None:
    """Deployment benchmark on this CPU: eager, torch.compile, ONNX Runtime, TVM untuned and tuned."""
    from agd.commands.tvm import parse_size

    paths = list(genotypes) if genotypes else [Path(p) for p in DEFAULT_STUDENTS]
    for p in paths:
        if not p.is_file():
            raise AgdError(f"genotype {p}: no such file")
    res = bench_deploy(paths, parse_size(size), trials, database, repeats, threads,
                       progress=lambda m: typer.echo(m, err=True))
    if output is not None:
        atomic_write_json(output, res)
    for s in res["students"]:
        eager = next((r["median_ms"] for r in s["rows"] if r["backend"] == "eager" and r["ok"]), None)
        typer.echo(f"{s['genotype']} {'x'.join(map(str, s['input']))}:")
        for r in s["rows"]:
            if r["ok"]:
                typer.echo(f"  {r['backend']:14} {r['median_ms']:9.3f} ms  {eager / r['median_ms'] if eager else 0:5.2f}x eager  "
                           f"err {r['max_abs_error']:.1e}  {r['note']}")
            else:
                typer.echo(f"  {r['backend']:14}         -     {r['note']}")
    typer.echo(json.dumps({"load_avg_start": res["load_avg_start"], "load_avg_end": res["load_avg_end"]}))
