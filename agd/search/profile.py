"""Where a search or training step spends its time, and how fast it computes.

Every step of :class:`agd.search.Search` and :class:`agd.train.Trainer` logs the milliseconds of its
phases (``ms_forward``, ``ms_loss``, ``ms_backward``, ``ms_optimizer``, summed over the step's forwards) in
``metrics.jsonl``. :func:`step_profile` adds, once per run, what the log cannot split: each loss term's
own forward + backward (:meth:`agd.distill.DistillLoss.term_times`) and the network's forward FLOPs,
counted by ``torch.utils.flop_counter`` (exact for convolutions; a backward is taken as twice its
forward). :func:`summarize` turns both into shares of the median step and GFLOP/s against the CPU's
measured float32 matmul rate (:func:`matmul_peak_gflops`, the practical FMA peak of its BLAS).
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

import torch

from agd.io import atomic_write_json, read_json
from agd.runs import RunDir
from agd.timing import device_sync, wall_times_ms

PHASES = ("forward", "loss", "backward", "optimizer")


def matmul_peak_gflops(device: str | torch.device = "cpu", n: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of the best of ``repeats`` float32 n x n matrix products on ``device`` (torch's threads)."""
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)  # its own generator: torch's RNG (checkpointed runs) untouched
    a, b = torch.randn(n, n, device=dev, generator=g), torch.randn(n, n, device=dev, generator=g)
    best_ms = min(wall_times_ms(lambda: torch.mm(a, b), repeats + 1, sync=device_sync(dev)))
    return 2 * n ** 3 / (best_ms / 1e3) / 1e9


def forward_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (2 x MACs) of the forward that ``fn`` runs, without gradients and without moving torch's RNG."""
    # imported here, not at the top: torch.utils.flop_counter imports triton (about 0.5 s), which only a
    # profile needs, and the command line imports this module at start
    from torch.utils.flop_counter import FlopCounterMode

    with torch.random.fork_rng(devices=[]), torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def step_profile(forwards: list[Callable[[], torch.Tensor]], loss, batch: dict[str, torch.Tensor | None],
                 forwards_per_step: int) -> dict[str, Any]:
    """The once-per-run part of a step's profile: the FLOPs of one step (``forwards`` are the distinct
    forwards of a step, e.g. the sandwich's sampled, largest and smallest widths, each run
    ``forwards_per_step / len(forwards)`` times per step; backward = 2 x forward) and each loss term's
    milliseconds on the output of the first forward."""
    flops = [forward_flops(f) for f in forwards]
    per = forwards_per_step / len(forwards)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        out = forwards[0]()
    terms = loss.term_times(out, batch["target"], batch.get("gt")) if hasattr(loss, "term_times") else {}
    return {"step_gflop": 3 * per * sum(flops) / 1e9, "forward_gflop": [f / 1e9 for f in flops],
            "loss_terms_ms": {k: v * forwards_per_step for k, v in terms.items()},
            "forwards_per_step": forwards_per_step, "threads": torch.get_num_threads()}


def summarize(records: list[dict[str, Any]], profile: dict[str, Any] | None,
              peak_gflops: float | None) -> dict[str, Any]:
    """Median milliseconds per phase over the logged steps, their shares of the median step, the loss
    terms' shares, and the achieved GFLOP/s (against ``peak_gflops``)."""
    recs = [r for r in records if all(f"ms_{p}" in r for p in PHASES)]
    if not recs:
        return {}
    med = {p: statistics.median(r[f"ms_{p}"] for r in recs) for p in PHASES}
    step = statistics.median(sum(r[f"ms_{p}"] for p in PHASES) for r in recs)
    out: dict[str, Any] = {"steps": len(recs), "step_ms": step, "phases_ms": med,
                           "phase_share": {p: v / step for p, v in med.items()}}
    if profile:
        out["loss_terms_ms"] = profile["loss_terms_ms"]
        out["loss_term_share"] = {k: v / step for k, v in profile["loss_terms_ms"].items()}
        out["gflops"] = profile["step_gflop"] / (step / 1e3)
        out["threads"] = profile["threads"]
        if peak_gflops:
            out["peak_gflops"] = peak_gflops
            out["of_peak"] = out["gflops"] / peak_gflops
    return out


def format_summary(s: dict[str, Any]) -> list[str]:
    """Markdown lines for a run report."""
    if not s:
        return []
    lines = [f"- step time: {s['step_ms']:.0f} ms (median of {s['steps']} steps): "
             + ", ".join(f"{p} {s['phase_share'][p]:.0%}" for p in PHASES)]
    if "loss_term_share" in s:
        lines.append("- loss terms alone (forward + backward to the output, per step): "
                     + ", ".join(f"{k} {v:.0%} ({s['loss_terms_ms'][k]:.0f} ms)" for k, v in s["loss_term_share"].items()))
    if "gflops" in s:
        peak = f" = {s['of_peak']:.0%} of the measured float32 matmul peak ({s['peak_gflops']:.0f} GFLOP/s)" \
            if "of_peak" in s else ""
        lines.append(f"- compute: {s['gflops']:.1f} GFLOP/s on {s['threads']} threads{peak}")
    return lines


def step_lines(run: RunDir, records: list[dict[str, Any]]) -> list[str]:
    """The step profile's report lines from the run folder's ``profile.json`` and the logged step phases
    (also written as ``profile_summary.json``)."""
    prof_path = run.path / "profile.json"
    prof = read_json(prof_path, "step profile") if prof_path.is_file() else None
    summary = summarize(records, prof and prof["step"], prof and prof.get("peak_gflops"))
    if summary:
        atomic_write_json(run.path / "profile_summary.json", summary)
    return format_summary(summary) or ["- (no step timings logged)"]
