"""The pipeline's commands: ``agd baseline``, ``search``, ``train``, ``eval`` and ``compress`` (the main job);
the work is in :mod:`agd.jobs`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agd.commands.options import Device, Images, VggWeights, parse_size, with_teacher_options
from agd.jobs import (
    SearchJob,
    init_distributed,
    run_baseline_job,
    run_compress_job,
    run_eval_job,
    run_search_job,
    run_train_job,
)

app = typer.Typer()


@app.command("baseline")
@with_teacher_options
def baseline_cmd(
    genotype: Path = typer.Argument(..., help="The searched genotype (its MACs are the budget)."),
    weights: Optional[Path] = typer.Option(None, help="The searched student's trained weights; without them it is trained here too."),
    spec=None,
    images: Images = None,
    out: Path = typer.Option(Path("runs/baseline"), help="Output folder."),
    preset: str = typer.Option("tiny", help="Training preset, the same as the searched student's."),
    seeds: int = typer.Option(3, min=1, help="Number of random architectures."),
    device: Device = "cpu",
    train_steps: Optional[int] = typer.Option(None, help="Override the preset's training steps."),
    eval_images: Optional[Path] = typer.Option(None, help="Held-out images to evaluate on, at full size (default: --images)."),
) -> None:
    """Hand-designed and random networks at the same MACs, trained and evaluated like the searched one."""
    run_baseline_job(genotype, teacher_spec=spec, images=images, out=out, preset=preset, seeds=seeds, device=device,
                     searched_weights=weights, train_overrides={"steps": train_steps} if train_steps else None,
                     eval_images=eval_images)


@app.command("search")
@with_teacher_options
def search_cmd(
    spec=None,
    images: Images = None,
    out: Path = typer.Option(Path("runs/search"), help="Run folder."),
    preset: str = typer.Option("tiny", help="Search preset: tiny, cpu, small, paper."),
    macs: Optional[str] = typer.Option(None, help="MACs budget at the space's reference input, e.g. 12G."),
    ratio: Optional[float] = typer.Option(None, help="Budget as a fraction of the teacher's MACs, e.g. 0.1."),
    latency: Optional[str] = typer.Option(None, help="Latency budget, e.g. 15ms (needs --latency-table)."),
    latency_table: Optional[Path] = typer.Option(None, help="Latency table JSON (agd latency-table build)."),
    target: Optional[str] = typer.Option(None, help="The target the latency table must be for (x86, arm64, ...)."),
    latency_size: Optional[str] = typer.Option(None, help="Input HxW the latency budget is for (default: the one "
                                               "size the table holds for the space, else its reference size)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="With --latency: the precision the student "
                                            "will be deployed at; the latency table must be of it (default: the table's)."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="With --latency: tvm, onnxruntime or inductor; the "
                                          "latency table must be of it (default: the table's)."),
    device: Device = "cpu",
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    vgg_weights: VggWeights = None,
    steps: Optional[int] = typer.Option(None, help="Override the preset's search steps."),
    pretrain_steps: Optional[int] = typer.Option(None, help="Override the preset's pretraining steps."),
    seed: Optional[int] = typer.Option(None, help="Override the preset's seed."),
    space: Optional[str] = typer.Option(None, help="Space preset (default: the teacher's task and scale: translation, sr-x2, sr-x3, sr-x4)."),
    batch: Optional[int] = typer.Option(None, help="Override the preset's global batch size."),
) -> None:
    """Search an architecture within a budget by distillation from the teacher (torchrun: data parallel)."""
    init_distributed(device)
    overrides = {"search_steps": steps, "pretrain_steps": pretrain_steps, "seed": seed, "space": space, "batch": batch}
    run_search_job(SearchJob(teacher=spec, images=images, out=out, preset=preset, macs=macs, ratio=ratio,
                             latency=latency, latency_table=latency_table, target=target,
                             latency_size=parse_size(latency_size, "--latency-size"),
                             precision=precision, runtime=runtime,
                             device=device, resume=resume, vgg_weights=vgg_weights,
                             overrides={k: v for k, v in overrides.items() if v is not None}))


@app.command("train")
@with_teacher_options
def train_cmd(
    genotype: Path = typer.Argument(..., help="Genotype JSON (from agd search, or examples/)."),
    spec=None,
    images: Images = None,
    out: Path = typer.Option(Path("runs/train"), help="Run folder."),
    preset: str = typer.Option("tiny", help="Training preset: tiny, cpu, small, paper."),
    inherit: Optional[Path] = typer.Option(None, help="supernet.safetensors of the search to inherit weights from."),
    device: Device = "cpu",
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    vgg_weights: VggWeights = None,
    steps: Optional[int] = typer.Option(None, help="Override the preset's steps."),
) -> None:
    """Train the derived student by distillation (EMA weights saved as student.safetensors)."""
    run_train_job(genotype, teacher_spec=spec, images=images, out=out, preset=preset, device=device, resume=resume,
                  inherit=inherit, vgg_weights=vgg_weights, overrides={"steps": steps})


@app.command("eval")
@with_teacher_options
def eval_cmd(
    genotype: Path = typer.Argument(..., help="Genotype JSON."),
    weights: Optional[Path] = typer.Option(None, help="Student weights (student.safetensors); default: random init."),
    spec=None,
    images: Optional[Path] = typer.Option(None, help="Folder of evaluation images (SR: the HR images)."),
    out: Path = typer.Option(Path("runs/eval"), help="Output folder (eval.json, eval.md, images/)."),
    max_side: Optional[int] = typer.Option(None, help="Downscale images so the longest side is at most this."),
    inception: Optional[Path] = typer.Option(None, help="pt_inception-2015-12-05-6726825d.pth for FID."),
    device: Device = "cpu",
    backend: str = typer.Option("torch", help="torch (standard ops), or cpp / cuda (agd's fused blocks, see agd info; "
                                "cuda measured slower than cuDNN on an H200, BENCHMARKS.md)."),
) -> None:
    """PSNR/SSIM to the ground truth (SR) and to the teacher, FID, MACs, params, latency, side-by-side images."""
    run_eval_job(genotype, weights, teacher_spec=spec, images=images, out=out, device=device, max_side=max_side,
                 inception=inception, backend=backend)


@app.command("compress")
@with_teacher_options
def compress_cmd(
    spec=None,
    images: Images = None,
    out: Path = typer.Option(Path("runs/compress"), help="Run folder (search/, train/, eval/, summary.md)."),
    preset: str = typer.Option("cpu", help="Preset for search and training: tiny (a few minutes, a rough student), "
                               "cpu (the default: about 9-15 minutes on 2 cores), small, paper (a GPU)."),
    macs: Optional[str] = typer.Option(None, help="MACs budget, e.g. 12G."),
    ratio: Optional[float] = typer.Option(None, help="Budget as a fraction of the teacher's MACs (default 0.1)."),
    device: Device = "cpu",
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted compress run in --out."),
    vgg_weights: VggWeights = None,
    space: Optional[str] = typer.Option(None, help="Space preset (default: the teacher's task and scale)."),
    search_steps: Optional[int] = typer.Option(None, help="Override the preset's search steps."),
    pretrain_steps: Optional[int] = typer.Option(None, help="Override the preset's pretraining steps."),
    train_steps: Optional[int] = typer.Option(None, help="Override the preset's training steps."),
    eval_images: Optional[Path] = typer.Option(None, help="Held-out images to evaluate on (default: a held-out split "
                                               "of --images or of the built-in samples, never trained on)."),
    eval_max_side: int = typer.Option(256, min=16, help="Evaluation images are downscaled to at most this longest (HR) side."),
    baselines: int = typer.Option(0, min=0, help="Also train a hand-designed network and this many random networks at "
                                  "the student's MACs, identically, and put them in the summary."),
) -> None:
    """The main job: search → derive → train → eval on held-out images, with a summary table (teacher,
    student, the trivial baseline: bicubic for SR, the input for translation)."""
    if macs is None and ratio is None:
        ratio = 0.1
    search_over = {"space": space, "search_steps": search_steps, "pretrain_steps": pretrain_steps}
    run_compress_job(teacher_spec=spec, images=images, out=out, preset=preset, macs=macs, ratio=ratio,
                     device=device, resume=resume, vgg_weights=vgg_weights,
                     search_overrides={k: v for k, v in search_over.items() if v is not None},
                     train_overrides={"steps": train_steps} if train_steps else None,
                     eval_images=eval_images, eval_max_side=eval_max_side, baselines=baselines)
