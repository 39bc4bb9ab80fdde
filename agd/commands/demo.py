"""``agd demo``: the teachers at work on the built-in sample images (the work is in :mod:`agd.jobs.demo`)."""

from __future__ import annotations

from pathlib import Path

import typer

from agd.jobs.demo import DemoConfig, run_demo

app = typer.Typer()


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output folder for images and the summary table."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu, cuda."),
    max_side: int = typer.Option(256, min=32, help="Longest side of each sample image (HR) in pixels."),
    sr_teacher: str = typer.Option(DemoConfig.sr_teacher, help="Super-resolution teacher."),
    translation_teacher: str = typer.Option(DemoConfig.translation_teacher, help="Image-to-image translation teacher."),
) -> None:
    """The teachers at work on the built-in sample images: no search and no training (the main job is agd compress).

    Each sample is downscaled x4 (MATLAB bicubic), upscaled by the SR teacher and by bicubic
    interpolation (the honest baseline), and translated by the translation teacher; PNGs and a summary
    table (PSNR/SSIM, params, MACs, time) are written to OUT.
    """
    run_demo(DemoConfig(out=out, device=device, max_side=max_side, sr_teacher=sr_teacher,
                        translation_teacher=translation_teacher))
