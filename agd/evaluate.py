"""Evaluating a student (``agd eval``): quality against the ground truth (SR) and against the teacher's
outputs (both tasks), FID when Inception weights are given, cost, PyTorch latency on the current
device, and side-by-side images (input, teacher, student).

Every evaluation carries the trivial baseline beside the student, computed on the same images with the
same metric: MATLAB-bicubic upscaling of the LR input for SR (``bicubic_*`` columns), the untouched input
for translation (``identity_*``). A student that does not beat it is not worth deploying, and
:func:`verdict` says so in words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from agd.cost import count
from agd.data.images import write_image
from agd.data.resize import imresize
from agd.io import atomic_write_json, atomic_write_text
from agd.metrics import compute_fid, load_inception, psnr, ssim
from agd.timing import device_sync, wall_summary


def latency_ms(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device, *, warmup: int = 1,
               repeats: int = 7, max_seconds: float = 10.0) -> float:
    """Median wall time of one forward pass of a random input of ``shape`` (inference mode, synchronised on
    CUDA): ``warmup`` untimed passes, then up to ``repeats`` timed ones, stopping early once ``max_seconds``
    have been spent (at least one timed pass), so a slow model on a slow device does not stall the command."""
    x = torch.rand(shape, device=device)
    with torch.inference_mode():
        return wall_summary(lambda: model(x), repeats, warmup, device_sync(device), max_seconds).median_ms


def trivial_baseline(inp: torch.Tensor, task: str, scale: int) -> torch.Tensor:
    """What a user gets without any network: MATLAB-bicubic upscaling (SR) or the input itself."""
    return imresize(inp, scale=scale).clamp(0, 1) if task == "sr" else inp


BASELINE_NAME = {"sr": "bicubic", "translation": "identity"}


def _side_by_side(base: torch.Tensor, teacher: torch.Tensor, student: torch.Tensor, gt: torch.Tensor | None) -> torch.Tensor:
    h, w = teacher.shape[-2:]
    panels = [base, teacher, student] + ([gt] if gt is not None else [])
    sep = torch.ones(3, h, 4)
    out = []
    for p in panels:
        out += [p.clamp(0, 1), sep]
    return torch.cat(out[:-1], dim=2)


def evaluate_student(student, teacher, items, out_dir: Path, *, device, inception: str | Path | None = None,
                     latency_input: tuple[int, int] | None = None, write_images: bool = True) -> dict[str, Any]:
    device = torch.device(device)
    out_dir = Path(out_dir)
    student = student.to(device).eval()
    task, scale = student.task, student.scale
    crop = scale if task == "sr" else 0
    y = task == "sr"  # Y channel for SR (the literature's convention), RGB for translation
    rows, s_outs, t_outs = [], [], []
    base_name = BASELINE_NAME[task]
    for d in items:
        with torch.inference_mode():
            s = student(d.inp[None].to(device))[0].float().cpu().clamp(0, 1)
        base = trivial_baseline(d.inp, task, scale)
        row = {"image": d.name, "psnr_to_teacher": psnr(s, d.target, crop=crop, y_channel=y),
               "ssim_to_teacher": ssim(s, d.target, crop=crop, y_channel=y),
               f"{base_name}_psnr_to_teacher": psnr(base, d.target, crop=crop, y_channel=y),
               f"{base_name}_ssim_to_teacher": ssim(base, d.target, crop=crop, y_channel=y)}
        if d.gt is not None:
            row |= {"psnr": psnr(s, d.gt, crop=crop), "ssim": ssim(s, d.gt, crop=crop),
                    "teacher_psnr": psnr(d.target, d.gt, crop=crop), "teacher_ssim": ssim(d.target, d.gt, crop=crop),
                    f"{base_name}_psnr": psnr(base, d.gt, crop=crop), f"{base_name}_ssim": ssim(base, d.gt, crop=crop)}
        rows.append(row)
        s_outs.append(s)
        t_outs.append(d.target)
        if write_images:
            write_image(out_dir / "images" / f"{d.name}.png", _side_by_side(base, d.target, s, d.gt))
    keys = [k for k in rows[0] if k != "image"]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    ref = latency_input or student.genotype.config.reference_size
    in_shape = (1, student.genotype.config.in_ch, *ref)
    cost = count(student.net, in_shape)
    result = {"task": task, "scale": scale, "device": str(device), "images": rows, "mean": mean, "baseline": base_name,
              "macs": cost.macs, "params": cost.params, "input": list(in_shape),
              "latency_ms": latency_ms(student, in_shape, device)}
    if inception is not None:
        model = load_inception(inception, device=device)
        result["fid_to_teacher"] = compute_fid(s_outs, t_outs, model, device=device)
        if items[0].gt is not None:
            result["fid"] = compute_fid(s_outs, [d.gt for d in items], model, device=device)
    atomic_write_json(out_dir / "eval.json", result)
    atomic_write_text(out_dir / "eval.md", format_eval(result))
    return result


def verdict(student_psnr: float, baseline_psnr: float, baseline: str) -> str:
    """One sentence in words: does the student beat the trivial baseline (PSNR to the teacher)?"""
    gap = student_psnr - baseline_psnr
    if gap > 0:
        return f"The student is closer to the teacher than {baseline} by {gap:.2f} dB PSNR."
    return (f"WARNING: the student is {-gap:.2f} dB further from the teacher than {baseline} "
            f"({'plain bicubic upscaling' if baseline == 'bicubic' else 'the untouched input'}): it is not worth "
            "deploying. Train longer (--train-steps, --preset small), give more training images, or raise the budget.")


def format_eval(r: dict[str, Any]) -> str:
    lines = [f"# agd eval ({r['task']}{' x' + str(r['scale']) if r['task'] == 'sr' else ''}, {r['device']})", "",
             f"- cost: {r['macs'] / 1e9:.3f} GMACs, {r['params'] / 1e6:.3f} M params at {'x'.join(map(str, r['input']))}",
             f"- PyTorch latency: {r['latency_ms']:.2f} ms (median) at that input"]
    base = r.get("baseline")
    if base and f"{base}_psnr_to_teacher" in r["mean"]:
        lines.append(f"- {verdict(r['mean']['psnr_to_teacher'], r['mean'][f'{base}_psnr_to_teacher'], base)}")
    for k in ("fid_to_teacher", "fid"):
        if k in r:
            lines.append(f"- {k}: {r[k]:.3f}")
    keys = [k for k in r["images"][0] if k != "image"]
    lines += ["", "| image | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in r["images"] + [{"image": "**mean**", **r["mean"]}]:
        lines.append(f"| {row['image']} | " + " | ".join(f"{row[k]:.4f}" for k in keys) + " |")
    lines.append("\nPSNR/SSIM: " + ("Y channel, scale-pixel border, 8-bit" if r["task"] == "sr" else "RGB, 8-bit")
                 + "; images/ holds " + ("bicubic" if r["task"] == "sr" else "input") + " | teacher | student"
                 + (" | ground truth" if r["task"] == "sr" else ""))
    return "\n".join(lines) + "\n"
