"""The demo job (``agd demo``): both teachers at work on the built-in sample images, no training.

For each sample image (shipped inside installed wheels, see :mod:`agd.data.samples`):
- super-resolution: the image (fitted to ``max_side``) is the ground truth HR; its MATLAB-bicubic x``scale``
  downscale, rounded to 8 bits, is the LR input; the SR teacher and bicubic interpolation (the baseline
  any SR model must beat) both upscale it, and both are scored against HR (Y-PSNR/SSIM, ``scale``-pixel
  border, 8-bit outputs, the SR literature's convention);
- translation: the HR image goes through the translation teacher.
PNGs, ``summary.md`` and ``summary.json`` are written atomically into the output folder.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress

from agd.cost import count_macs
from agd.data.images import write_image
from agd.data.resize import fit_image, imresize, to_8bit
from agd.data.samples import DEMO, sample_images
from agd.io import AgdError, atomic_write_json, atomic_write_text
from agd.metrics import psnr, ssim
from agd.space.config import task_default
from agd.teachers import load_teacher, tiled_forward


@dataclass
class DemoConfig:
    out: Path = Path("runs/demo")
    device: str = "cpu"
    max_side: int = 256
    sr_teacher: str = task_default("sr").teacher
    translation_teacher: str = task_default("translation").teacher
    tile: int = 256


def _timed(fn, x: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    y = fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return y, (time.perf_counter() - t0) * 1e3


def run_demo(cfg: DemoConfig) -> dict:
    device = torch.device(cfg.device)
    sr = load_teacher(cfg.sr_teacher, device=device)
    tr = load_teacher(cfg.translation_teacher, device=device)
    if sr.info.task != "sr":
        raise AgdError(f"--sr-teacher {cfg.sr_teacher}: is a {sr.info.task} teacher, not super-resolution")
    if tr.info.task != "translation":
        raise AgdError(f"--translation-teacher {cfg.translation_teacher}: is a {tr.info.task} teacher, not translation")
    scale = sr.info.scale
    multiple = scale * 4 // math.gcd(scale, 4)  # SR needs a multiple of the scale, CycleGAN of 4
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    samples = sample_images(DEMO, available_only=True)
    rows = []
    with Progress(transient=True) as progress:
        task = progress.add_task("teachers at work", total=len(samples))
        for name, img in samples:
            hr = fit_image(img, cfg.max_side, multiple)
            lr = to_8bit(imresize(hr, scale=1 / scale))
            with torch.inference_mode():
                x = lr.unsqueeze(0).to(device)
                sr_out, sr_ms = _timed(lambda t: tiled_forward(sr, t, scale=scale, tile=cfg.tile), x, device)
                tr_out, tr_ms = _timed(tr, hr.unsqueeze(0).to(device), device)
            sr_img = sr_out[0].cpu().clamp(0, 1)
            bic = imresize(lr, scale=scale).clamp(0, 1)
            tr_img = tr_out[0].cpu().clamp(0, 1)
            for suffix, im in (("hr", hr), ("lr", lr), (f"x{scale}_{sr.info.name}", sr_img),
                               (f"x{scale}_bicubic", bic), (tr.info.name, tr_img)):
                write_image(out / f"{name}_{suffix}.png", im)
            h, w = hr.shape[1:]
            rows.append({
                "image": name,
                "hr_size": f"{w}x{h}",
                "sr_psnr_y": psnr(sr_img, hr, crop=scale, y_channel=True),
                "sr_ssim_y": ssim(sr_img, hr, crop=scale, y_channel=True),
                "bicubic_psnr_y": psnr(bic, hr, crop=scale, y_channel=True),
                "bicubic_ssim_y": ssim(bic, hr, crop=scale, y_channel=True),
                "sr_gmacs": count_macs(sr.module, (1, 3, h // scale, w // scale)) / 1e9,
                "sr_ms": sr_ms,
                "translation_gmacs": count_macs(tr.module, (1, 3, h, w)) / 1e9,
                "translation_ms": tr_ms,
                "translation_mean_abs_change": float((tr_img - hr).abs().mean()),
            })
            progress.advance(task)

    teachers = [
        {"name": t.info.name, "task": t.info.task, "scale": t.info.scale,
         "params": sum(p.numel() for p in t.module.parameters())}
        for t in (sr, tr)
    ]
    summary = {"config": {k: str(v) for k, v in asdict(cfg).items()}, "device": str(device),
               "torch": torch.__version__, "teachers": teachers, "images": rows,
               "mean": {k: sum(r[k] for r in rows) / len(rows)
                        for k in ("sr_psnr_y", "sr_ssim_y", "bicubic_psnr_y", "bicubic_ssim_y")}}
    atomic_write_json(out / "summary.json", summary)
    text = format_summary(summary, sr.info.name, tr.info.name, scale)
    atomic_write_text(out / "summary.md", text)
    Console().print(text, highlight=False, markup=False)
    Console().print(f"wrote {len(rows) * 5} PNGs, summary.md and summary.json to {out}", highlight=False)
    return summary


def format_summary(s: dict, sr_name: str, tr_name: str, scale: int) -> str:
    lines = [
        f"# agd demo: teachers on the built-in samples ({s['device']}, torch {s['torch']})",
        "",
        "| teacher | task | params |",
        "|---|---|---|",
    ]
    lines += [f"| {t['name']} | {t['task']}{' x' + str(t['scale']) if t['task'] == 'sr' else ''} | "
              f"{t['params'] / 1e6:.3f} M |" for t in s["teachers"]]
    lines += [
        "",
        f"Super-resolution x{scale} from a MATLAB-bicubic downscale of each image; Y-PSNR (dB) / SSIM with a "
        f"{scale}-pixel border, 8-bit. Translation: mean absolute change of the image in [0, 1].",
        "",
        f"| image | HR size | {sr_name} PSNR / SSIM | bicubic PSNR / SSIM | SR GMACs | SR ms | "
        f"{tr_name} GMACs | {tr_name} ms | {tr_name} change |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["images"]:
        lines.append(
            f"| {r['image']} | {r['hr_size']} | {r['sr_psnr_y']:.2f} / {r['sr_ssim_y']:.4f} | "
            f"{r['bicubic_psnr_y']:.2f} / {r['bicubic_ssim_y']:.4f} | {r['sr_gmacs']:.1f} | {r['sr_ms']:.0f} | "
            f"{r['translation_gmacs']:.1f} | {r['translation_ms']:.0f} | {r['translation_mean_abs_change']:.3f} |"
        )
    m = s["mean"]
    lines.append(f"| **mean** | | {m['sr_psnr_y']:.2f} / {m['sr_ssim_y']:.4f} | "
                 f"{m['bicubic_psnr_y']:.2f} / {m['bicubic_ssim_y']:.4f} | | | | | |")
    return "\n".join(lines) + "\n"
