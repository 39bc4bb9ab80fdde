"""``agd train``, ``agd eval``, ``agd compress`` (the main job) and ``agd baseline``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from agd.io import AgdError, atomic_write_json, atomic_write_text


def _teacher_and_items(teacher_spec, images: Path | None, max_side: int | None, device, cache_root: Path,
                       exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
                       translation_variants: int = 0):
    from agd.search import data as D
    from agd.teachers import load_teacher

    teacher = load_teacher(teacher_spec, device=torch.device(device))
    loaded = D.load_images(images, exclude=exclude, only=only)
    if not loaded:
        raise AgdError(f"images {images or '(built-in samples)'}: no images left to use"
                       + (f" (asked for {', '.join(only)})" if only else ""))
    items = D.prepare(loaded, teacher, cache_dir=cache_root / ".teacher-cache", max_side=max_side, device=device,
                      translation_variants=translation_variants)
    return teacher, items


def _check_pair(genotype, teacher) -> None:
    if genotype.task != teacher.info.task or genotype.scale != teacher.info.scale:
        raise AgdError(f"genotype is a {genotype.task} x{genotype.scale} network, the teacher {teacher.info.name} "
                       f"does {teacher.info.task} x{teacher.info.scale}")


def run_train_job(genotype_path: Path, *, teacher_spec=None, images: Path | None, out: Path, preset: str = "tiny",
                  device: str = "cpu", resume: bool = False, inherit: Path | None = None,
                  vgg_weights: Path | None = None, quiet: bool = False, overrides: dict | None = None,
                  exclude: tuple[str, ...] = ()):
    from rich.console import Console

    from agd.commands.search import _progress_bar, check_same_teacher, make_loss, teacher_record
    from agd.runs import RunDir
    from agd.space import Genotype, Supernet
    from agd.student import Student
    from agd.train import Trainer, get_train_config

    g = Genotype.load(genotype_path)
    cfg = get_train_config(preset, **(overrides or {}))
    run = RunDir.open(out, resume=resume)
    saved: dict[str, Any] = {}
    if resume:
        from agd.teachers import TeacherSpec, resolve_on_resume

        saved = run.read_config()
        exclude = tuple(saved.get("exclude", exclude))
        t_saved = saved.get("teacher")
        teacher_spec = resolve_on_resume(None if teacher_spec is None else TeacherSpec.of(teacher_spec),
                                         t_saved.get("spec") if isinstance(t_saved, dict) else None, str(out))
    teacher, items = _teacher_and_items(teacher_spec, images, cfg.max_side, device, out.parent, exclude=exclude,
                                        translation_variants=cfg.translation_variants)
    if resume:
        check_same_teacher(teacher, saved.get("teacher"), out)
    _check_pair(g, teacher)
    net = None
    if inherit is not None:
        from safetensors.torch import load_file

        from agd.space import derive

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
        from agd.search.profile import matmul_peak_gflops

        atomic_write_json(run.path / "profile.json", {"step": trainer.profile(), "peak_gflops": matmul_peak_gflops(device)})
    console = Console(quiet=quiet)
    with _progress_bar(console, quiet, "train", cfg.steps) as on_step:
        trainer.progress = on_step
        trainer.run_loop(resume=resume)
    trainer.save()
    console.print(f"student {run.path / 'student.safetensors'}", highlight=False)
    return run


def run_eval_job(genotype_path: Path, weights: Path | None, *, teacher_spec=None, images: Path | None, out: Path,
                 device: str = "cpu", max_side: int | None = None, inception: Path | None = None, quiet: bool = False,
                 backend: str = "torch", only: tuple[str, ...] | None = None):
    from rich.console import Console

    from agd.evaluate import evaluate_student, format_eval
    from agd.student import load_student

    student = load_student(genotype_path, weights, device=device)
    if backend != "torch":
        from agd.space.fast import convert

        student.net = convert(student.net, backend)  # agd's fused C++/CUDA blocks; same weights
    teacher, items = _teacher_and_items(teacher_spec, images, max_side, device, out.parent, only=only)
    _check_pair(student.genotype, teacher)
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
    from rich.console import Console

    from agd.commands.search import SearchJob, run_search_job
    from agd.cost import count
    from agd.evaluate import latency_ms
    from agd.search import data as D
    from agd.teachers import load_teacher

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
        teacher_spec = _recorded_teacher(teacher_spec, search_dir)
    console.rule("1/3 search")
    if not (resume and (search_dir / "genotype.json").is_file()):
        run_search_job(SearchJob(teacher=teacher_spec, images=images, exclude=exclude, out=search_dir, preset=preset,
                                 macs=macs, ratio=ratio, device=device,
                                 resume=resume and (search_dir / "checkpoint.safetensors").is_file(),
                                 vgg_weights=vgg_weights, quiet=quiet, overrides=search_overrides))
    teacher_spec = _recorded_teacher(teacher_spec, search_dir)  # what the search found: task, scale, range
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
        from agd.commands.baseline import run_baseline_job

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
    from agd.search.plots import plot_pareto

    plot_pareto(_pareto_points(teacher, t_cost, result), out / "pareto.png",
                metric="psnr" if "psnr" in result["mean"] else "psnr_to_teacher")
    text = format_compress(summary)
    atomic_write_text(out / "summary.md", text)
    console.print(text, highlight=False, markup=False)
    return summary


def _recorded_teacher(given, run_dir: Path):
    """The teacher a run folder's config.yaml records (the given one must not contradict it)."""
    from agd.runs import RunDir
    from agd.teachers import TeacherSpec, resolve_on_resume

    saved = RunDir(run_dir).read_config().get("teacher")
    return resolve_on_resume(None if given is None else TeacherSpec.of(given),
                             saved.get("spec") if isinstance(saved, dict) else None, str(run_dir.parent))


def _pareto_points(teacher, t_cost, result) -> list[dict[str, Any]]:
    """Teacher and student for the Pareto chart: against the ground truth for SR (the teacher has a score
    there), against the teacher for translation (the teacher itself is the reference, shown at 0 error)."""
    mean = result["mean"]
    if "psnr" in mean:
        return [{"name": f"teacher {teacher.info.name}", "macs": t_cost.macs, "psnr": mean["teacher_psnr"]},
                {"name": "student", "macs": result["macs"], "psnr": mean["psnr"]}]
    return [{"name": "student", "macs": result["macs"], "psnr_to_teacher": mean["psnr_to_teacher"]}]


def format_compress(s: dict[str, Any]) -> str:
    from agd.evaluate import verdict

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


def init_distributed(device: str) -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
