"""``agd bench deploy``: derived students at batch 1 on this CPU, at each precision the CPU has instructions
for: fp32 (PyTorch eager, torch.compile, ONNX Runtime, TVM untuned and tuned), bf16 (eager and
torch.compile under autocast; TVM's row says why it has none) and int8 (ONNX Runtime QDQ, PT2E with the x86
inductor quantizer, TVM on VNNI untuned and tuned), with median ms, max error and PSNR to the fp32 output,
written as JSON rows beside the CPU model and its extensions (the suite; the command is in
:mod:`agd.commands.bench`)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import torch

from agd.arch import Genotype
from agd.machine import PRECISIONS, cpu_summary, precision_reason
from agd.tuning.artifact import load_generator
from agd.tuning.calibration import input_range, network_inputs, random_input
from agd.tuning.compare import PRECISION_OF, CompareConfig, backends_for, compare
from agd.tuning.targets import resolve_target

DEFAULT_STUDENTS = ("examples/translation_r9_small.json", "examples/sr_x4_small.json")


def supported_precisions() -> tuple[str, ...]:
    """The precisions this CPU has instructions for (agd.machine)."""
    return tuple(p for p in PRECISIONS if precision_reason(p) is None)


def bench_deploy(genotypes: list[Path], size: Optional[tuple[int, int]], trials: int, database: Path,
                 repeats: int, threads: Optional[int], progress=None, backends: Optional[tuple[str, ...]] = None,
                 precisions: Optional[tuple[str, ...]] = None, calibration: str = "builtin",
                 weights: Optional[dict[Path, Path]] = None) -> dict:
    """``weights`` maps a genotype path to its trained state dict (a student from ``agd compress``); the
    others are seeded random inits (latency work: their PSNR to fp32 says how far a runtime moves the same
    network, not how good a student is)."""
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
