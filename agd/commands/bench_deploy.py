"""``agd bench deploy``: derived students at batch 1 on this CPU, at each precision the CPU has instructions
for: fp32 (PyTorch eager, torch.compile, ONNX Runtime, TVM untuned and tuned), bf16 (eager and
torch.compile under autocast; TVM's row says why it has none) and int8 (ONNX Runtime QDQ, PT2E with the x86
inductor quantizer, TVM on VNNI untuned and tuned), with median ms, max error and PSNR to the fp32 output,
written as JSON rows beside the CPU model and its extensions."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from agd.io import AgdError, atomic_write_json

DEFAULT_STUDENTS = ("examples/translation_r9_small.json", "examples/sr_x4_small.json")


def supported_precisions() -> tuple[str, ...]:
    """The precisions this CPU has instructions for (agd.machine)."""
    from agd.machine import PRECISIONS, precision_reason

    return tuple(p for p in PRECISIONS if precision_reason(p) is None)


def bench_deploy(genotypes: list[Path], size: Optional[tuple[int, int]], trials: int, database: Path,
                 repeats: int, threads: Optional[int], progress=None, backends: Optional[tuple[str, ...]] = None,
                 precisions: Optional[tuple[str, ...]] = None, calibration: str = "builtin",
                 weights: Optional[dict[Path, Path]] = None) -> dict:
    """``weights`` maps a genotype path to its trained state dict (a student from ``agd compress``); the
    others are seeded random inits (latency work: their PSNR to fp32 says how far a runtime moves the same
    network, not how good a student is)."""
    import os

    import torch

    from agd.machine import cpu_summary
    from agd.space import Genotype
    from agd.tuning.artifact import load_generator
    from agd.tuning.calibration import input_range, network_inputs, random_input
    from agd.tuning.compare import PRECISION_OF, CompareConfig, backends_for, compare
    from agd.tuning.targets import resolve_target

    spec = resolve_target("x86")
    precisions = precisions or supported_precisions()
    chosen = backends or backends_for(precisions)
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": cpu_summary(), "precisions": list(precisions),
           "torch_threads": threads or torch.get_num_threads(), "target": spec.tvm_target,
           "load_avg_start": os.getloadavg(), "trials": trials, "database": str(database), "calibration": calibration,
           "students": []}
    for path in genotypes:
        g = Genotype.load(path)
        h, w = size or g.config.reference_size
        x = random_input((1, g.config.in_ch, h, w), g.config.scale)
        wpath = (weights or {}).get(path)
        if progress:
            progress(f"{path} at {h}x{w}" + (f", weights {wpath}" if wpath else ", random init"))
        calib = (network_inputs(calibration, (h, w), g.config.scale, n=8)
                 if any(PRECISION_OF.get(b) == "int8" for b in chosen) else ())
        if wpath is not None:  # a trained student is measured on a held-out image, not noise
            x = network_inputs("builtin", (h, w), g.config.scale, n=1, held_out=True, seed=3)[0]
        lo, hi = input_range(g.config.scale)
        cfg = CompareConfig(backends=chosen, trials=trials, database=database, repeats=repeats, threads=threads,
                            calibration=calib, data_range=hi - lo)
        rows = compare(load_generator(g, wpath), x, spec, cfg, progress=progress)
        out["students"].append({"genotype": str(path), "weights": str(wpath) if wpath else None,
                                "input": list(x.shape), "rows": rows})
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
    precision: Optional[str] = typer.Option(None, "--precision", help="Comma-separated precisions (default: every "
                                            "one this CPU has instructions for, of fp32, bf16, int8)."),
    calibration: str = typer.Option("builtin", help="int8 rows: folder of training images, or 'builtin'."),
    student: Optional[list[Path]] = typer.Option(None, "--student", help="Also a trained student: an `agd compress` "
                                                 "run folder (its train/genotype.json and train/student.safetensors)."),
) -> None:
    """Deployment benchmark on this CPU, per precision: eager, torch.compile, ONNX Runtime, PT2E, TVM untuned and tuned."""
    from agd.commands.tvm import parse_size
    from agd.machine import require_precision

    paths = list(genotypes) if genotypes else [Path(p) for p in DEFAULT_STUDENTS]
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
    from agd.tuning.quiet import quiet_native_logs

    with quiet_native_logs():
        res = bench_deploy(paths, parse_size(size), trials, database, repeats, threads,
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
