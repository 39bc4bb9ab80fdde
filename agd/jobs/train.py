"""The training and evaluation jobs (``agd train``, ``agd eval``; steps 2 and 3 of ``agd compress``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import load_file

from agd.arch import Genotype, derive
from agd.arch.fast import convert
from agd.arch.student import Student, load_student
from agd.distill.settings import make_loss
from agd.evaluate import evaluate_student, format_eval
from agd.io import AgdError, atomic_write_json
from agd.jobs.progress import progress_bar
from agd.jobs.search import check_same_teacher, teacher_record
from agd.runs import RunDir
from agd.search import data as D
from agd.search.profile import matmul_peak_gflops
from agd.search.supernet import Supernet
from agd.teachers import TeacherSpec, load_teacher, resolve_on_resume
from agd.train import Trainer, get_train_config


def teacher_and_items(teacher_spec, images: Path | None, max_side: int | None, device, cache_root: Path,
                      exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
                      translation_variants: int = 0):
    """The teacher and the distillation images (teacher outputs cached under ``cache_root``)."""
    teacher = load_teacher(teacher_spec, device=torch.device(device))
    loaded = D.load_images(images, exclude=exclude, only=only)
    if not loaded:
        raise AgdError(f"images {images or '(built-in samples)'}: no images left to use"
                       + (f" (asked for {', '.join(only)})" if only else ""))
    items = D.prepare(loaded, teacher, cache_dir=cache_root / ".teacher-cache", max_side=max_side, device=device,
                      translation_variants=translation_variants)
    return teacher, items


def check_pair(genotype, teacher) -> None:
    if genotype.task != teacher.info.task or genotype.scale != teacher.info.scale:
        raise AgdError(f"genotype is a {genotype.task} x{genotype.scale} network, the teacher {teacher.info.name} "
                       f"does {teacher.info.task} x{teacher.info.scale}")


def recorded_teacher(given, run_dir: Path):
    """The teacher a run folder's config.yaml records (the given one must not contradict it)."""
    saved = RunDir(run_dir).read_config().get("teacher")
    return resolve_on_resume(None if given is None else TeacherSpec.of(given),
                             saved.get("spec") if isinstance(saved, dict) else None, str(run_dir.parent))


def run_train_job(genotype_path: Path, *, teacher_spec=None, images: Path | None, out: Path, preset: str = "tiny",
                  device: str = "cpu", resume: bool = False, inherit: Path | None = None,
                  vgg_weights: Path | None = None, quiet: bool = False, overrides: dict | None = None,
                  exclude: tuple[str, ...] = ()):
    g = Genotype.load(genotype_path)
    cfg = get_train_config(preset, **(overrides or {}))
    run = RunDir.open(out, resume=resume)
    saved: dict[str, Any] = {}
    if resume:
        saved = run.read_config()
        exclude = tuple(saved.get("exclude", exclude))
        t_saved = saved.get("teacher")
        teacher_spec = resolve_on_resume(None if teacher_spec is None else TeacherSpec.of(teacher_spec),
                                         t_saved.get("spec") if isinstance(t_saved, dict) else None, str(out))
    teacher, items = teacher_and_items(teacher_spec, images, cfg.max_side, device, out.parent, exclude=exclude,
                                       translation_variants=cfg.translation_variants)
    if resume:
        check_same_teacher(teacher, saved.get("teacher"), out)
    check_pair(g, teacher)
    net = None
    if inherit is not None:
        sn = Supernet(g.config)
        sn.load_state_dict(load_file(str(inherit)))
        net = derive(g, sn)
    torch.manual_seed(cfg.seed)
    student = Student(g, net)
    loss = make_loss(cfg.loss, teacher, vgg_weights, device, phase="train")
    if not resume:
        run.write_config({"command": "train", "genotype": g.to_dict(), "teacher": teacher_record(teacher),
                          "images": str(images) if images else "built-in samples", "exclude": list(exclude),
                          "image_names": [d.name for d in items], "inherit": str(inherit) if inherit else None,
                          "train": cfg.to_dict(), "loss": loss.describe()})
    trainer = Trainer(cfg, student, items, loss, run, device=device)
    if not resume:
        atomic_write_json(run.path / "profile.json", {"step": trainer.profile(), "peak_gflops": matmul_peak_gflops(device)})
    console = Console(quiet=quiet)
    with progress_bar(console, quiet, "train", cfg.steps) as on_step:
        trainer.progress = on_step
        trainer.run_loop(resume=resume)
    trainer.save()
    console.print(f"student {run.path / 'student.safetensors'}", highlight=False)
    return run


def run_eval_job(genotype_path: Path, weights: Path | None, *, teacher_spec=None, images: Path | None, out: Path,
                 device: str = "cpu", max_side: int | None = None, inception: Path | None = None, quiet: bool = False,
                 backend: str = "torch", only: tuple[str, ...] | None = None):
    student = load_student(genotype_path, weights, device=device)
    if backend != "torch":
        student.net = convert(student.net, backend)  # agd's fused C++/CUDA blocks; same weights
    teacher, items = teacher_and_items(teacher_spec, images, max_side, device, out.parent, only=only)
    check_pair(student.genotype, teacher)
    check_eval_size(items, student.genotype, images)
    result = evaluate_student(student, teacher, items, out, device=device, inception=inception)
    result["images_source"] = str(images) if images else "built-in samples"
    result["backend"] = backend
    Console(quiet=quiet).print(format_eval(result), highlight=False, markup=False)
    return result


def check_eval_size(items, genotype, source) -> None:
    """Evaluation images the network cannot take get a one-line error naming the image."""
    need = 16 if genotype.task == "translation" else 4  # translation: two stride-2 stages and 3-pixel reflect pads
    for d in items:
        h, w = d.inp.shape[1:]
        if min(h, w) < need:
            raise AgdError(f"evaluation image {d.name} ({source or 'built-in samples'}): its input is {h}x{w} pixels; "
                           f"this {genotype.task} network needs at least {need}x{need}")
