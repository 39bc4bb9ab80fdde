"""The main job (``agd compress``): search → derive → train → eval on held-out images, then a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from agd.cost import count
from agd.evaluate import latency_ms, verdict
from agd.io import AgdError, atomic_write_json, atomic_write_text
from agd.jobs.baseline import run_baseline_job
from agd.jobs.search import SearchJob, run_search_job
from agd.jobs.train import recorded_teacher, run_eval_job, run_train_job
from agd.search import data as D
from agd.search.plots import plot_pareto
from agd.teachers import load_teacher


def run_compress_job(*, teacher_spec=None, images: Path | None, out: Path, preset: str, macs: str | None,
                     ratio: float | None, device: str, resume: bool = False, vgg_weights: Path | None = None,
                     quiet: bool = False, search_overrides: dict | None = None,
                     train_overrides: dict | None = None, eval_images: Path | None = None,
                     eval_max_side: int | None = 256, baselines: int = 0) -> dict[str, Any]:
    """search → derive → train → eval, each in its own sub-folder of ``out``, then a summary table.

    Evaluation is on images the search and training never saw: ``eval_images``, or else a held-out split
    of ``images`` (:func:`agd.search.data.held_out_split`), at most ``eval_max_side`` pixels on the longest
    (HR) side. The summary carries the trivial baseline (bicubic for SR, the input for translation) and,
    with ``baselines`` > 0, a hand-designed network and that many random networks at the same MACs, trained
    and evaluated identically (``baselines/``)."""
    console = Console(quiet=quiet)
    out = Path(out)
    search_dir, train_dir, eval_dir = out / "search", out / "train", out / "eval"
    if eval_images is None:
        _, held_out = D.held_out_split(images)
        exclude, only = held_out, held_out
    else:
        exclude, only = (), None
        for name, img in D.load_images(eval_images):  # bad evaluation images fail now, not after the training
            if min(img.shape[1:]) < 16:
                raise AgdError(f"--eval-images {eval_images}: image {name} is {img.shape[1]}x{img.shape[2]} pixels; "
                               "evaluation needs at least 16x16")
    eval_source = images if eval_images is None else eval_images
    if resume and (search_dir / "config.yaml").is_file():
        teacher_spec = recorded_teacher(teacher_spec, search_dir)
    console.rule("1/3 search")
    if not (resume and (search_dir / "genotype.json").is_file()):
        run_search_job(SearchJob(teacher=teacher_spec, images=images, exclude=exclude, out=search_dir, preset=preset,
                                 macs=macs, ratio=ratio, device=device,
                                 resume=resume and (search_dir / "checkpoint.safetensors").is_file(),
                                 vgg_weights=vgg_weights, quiet=quiet, overrides=search_overrides))
    teacher_spec = recorded_teacher(teacher_spec, search_dir)  # what the search found: task, scale, range
    console.rule("2/3 train")
    if not (resume and (train_dir / "student.safetensors").is_file()):
        run_train_job(search_dir / "genotype.json", teacher_spec=teacher_spec, images=images, out=train_dir, preset=preset,
                      device=device, resume=resume and (train_dir / "checkpoint.safetensors").is_file(),
                      inherit=search_dir / "supernet.safetensors", vgg_weights=vgg_weights, quiet=quiet,
                      overrides=train_overrides, exclude=exclude)
    console.rule("3/3 eval (held-out images)")
    result = run_eval_job(train_dir / "genotype.json", train_dir / "student.safetensors", teacher_spec=teacher_spec,
                          images=eval_source, out=eval_dir, device=device, quiet=True, max_side=eval_max_side, only=only)
    rows = []
    if baselines > 0:
        console.rule(f"baselines: hand-designed and {baselines} random networks at the same MACs")
        rows = run_baseline_job(train_dir / "genotype.json", teacher_spec=teacher_spec, images=images,
                                out=out / "baselines", preset=preset, seeds=baselines, device=device,
                                searched_weights=train_dir / "student.safetensors", quiet=quiet,
                                train_overrides=train_overrides, eval_images=eval_source, exclude=exclude, only=only,
                                eval_max_side=eval_max_side)
    teacher = load_teacher(teacher_spec, device=torch.device(device))
    shape = tuple(result["input"])
    t_cost = count(teacher.module, shape)
    t_lat = latency_ms(teacher, shape, torch.device(device), warmup=0, repeats=3, max_seconds=5.0)
    base = result["baseline"]
    mean = result["mean"]
    summary = {"teacher": {"name": teacher.info.name, "macs": t_cost.macs, "params": t_cost.params, "latency_ms": t_lat},
               "student": {"macs": result["macs"], "params": result["params"], "latency_ms": result["latency_ms"], **mean},
               "baseline": {"name": base, "psnr_to_teacher": mean[f"{base}_psnr_to_teacher"],
                            **({"psnr": mean[f"{base}_psnr"]} if f"{base}_psnr" in mean else {})},
               "networks": [{k: r[k] for k in ("name", "macs", "params", "psnr_to_teacher", "psnr") if k in r}
                            for r in rows if r["name"] != "searched"],
               "eval_images": {"source": result["images_source"], "names": [r["image"] for r in result["images"]],
                               "held_out_from_training": True, "max_side": eval_max_side},
               "input": list(shape), "device": device}
    atomic_write_json(out / "summary.json", summary)
    plot_pareto(_pareto_points(teacher, t_cost, result), out / "pareto.png",
                metric="psnr" if "psnr" in result["mean"] else "psnr_to_teacher")
    text = format_compress(summary)
    atomic_write_text(out / "summary.md", text)
    console.print(text, highlight=False, markup=False)
    return summary


def _pareto_points(teacher, t_cost, result) -> list[dict[str, Any]]:
    """Teacher and student for the Pareto chart: against the ground truth for SR (the teacher has a score
    there), against the teacher for translation (the teacher itself is the reference, shown at 0 error)."""
    mean = result["mean"]
    if "psnr" in mean:
        return [{"name": f"teacher {teacher.info.name}", "macs": t_cost.macs, "psnr": mean["teacher_psnr"]},
                {"name": "student", "macs": result["macs"], "psnr": mean["psnr"]}]
    return [{"name": "student", "macs": result["macs"], "psnr_to_teacher": mean["psnr_to_teacher"]}]


def format_compress(s: dict[str, Any]) -> str:
    t, st, b = s["teacher"], s["student"], s["baseline"]
    shape = "x".join(map(str, s["input"]))
    def gt(d: dict, key: str = "psnr") -> str:  # translation has no ground truth: "-", not nan
        return f"{d[key]:.2f}" if key in d else "-"

    ev = s["eval_images"]
    lines = [f"# agd compress: {t['name']} → student ({s['device']}, input {shape})", "",
             f"Evaluated on {len(ev['names'])} held-out images the search and training never saw "
             f"({ev['source']}: {', '.join(ev['names'])}).", "",
             "| | GMACs | params (M) | latency (ms) | PSNR to teacher | PSNR to ground truth |", "|---|---|---|---|---|---|",
             f"| teacher | {t['macs'] / 1e9:.2f} | {t['params'] / 1e6:.3f} | {t['latency_ms']:.1f} | - | "
             f"{gt(st, 'teacher_psnr')} |",
             f"| student | {st['macs'] / 1e9:.2f} | {st['params'] / 1e6:.3f} | {st['latency_ms']:.1f} | "
             f"{st['psnr_to_teacher']:.2f} | {gt(st)} |",
             f"| {b['name']} (no network) | 0 | 0 | - | {b['psnr_to_teacher']:.2f} | {gt(b)} |"]
    for r in s.get("networks", []):
        lines.append(f"| {r['name']} (same MACs, trained alike) | {r['macs'] / 1e9:.2f} | {r['params'] / 1e6:.3f} | - | "
                     f"{r['psnr_to_teacher']:.2f} | {gt(r)} |")
    lines += ["", verdict(st["psnr_to_teacher"], b["psnr_to_teacher"], b["name"]),
              f"student / teacher: {st['macs'] / t['macs']:.3f} of the MACs, {t['latency_ms'] / st['latency_ms']:.1f}x "
              "faster in PyTorch on this device",
              "PSNR: " + ("Y channel, scale-pixel border" if "psnr" in st else "RGB") + ", 8-bit; eval/images/ shows "
              + ("bicubic" if b["name"] == "bicubic" else "input") + " | teacher | student"
              + (" | ground truth" if "psnr" in st else "")]
    return "\n".join(lines) + "\n"
