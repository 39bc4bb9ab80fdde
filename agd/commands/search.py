"""``agd search``: from a teacher and images to a genotype within a budget, in a run folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agd.io import AgdError


@dataclass
class SearchJob:
    teacher: str = "realesrgan-x4plus"
    images: Path | None = None  # None: the built-in samples
    exclude: tuple[str, ...] = ()  # image names kept out of the search (a held-out split)
    out: Path = Path("runs/search")
    preset: str = "tiny"
    macs: str | None = None
    ratio: float | None = None
    latency: str | None = None  # e.g. "15ms", with latency_table (and optionally target)
    latency_table: Path | None = None
    target: str | None = None
    latency_size: tuple[int, int] | None = None  # the input the latency budget is for (None: from the table)
    device: str = "cpu"
    resume: bool = False
    vgg_weights: Path | None = None
    overrides: dict[str, Any] | None = None
    quiet: bool = False


LOSS_FOR = {
    # (search/train loss setting, task, phase) -> agd.distill preset; SR pretraining is pixel L1 alone
    # (AGD's [1, 0, 0, 0]), translation pretraining uses its search loss
    ("tiny", "sr", "pretrain"): "pixel", ("paper", "sr", "pretrain"): "pixel",
    ("tiny", "translation", "pretrain"): "tiny-translation",
    ("paper", "translation", "pretrain"): "paper-translation-search",
    ("tiny", "sr", "search"): "tiny-sr", ("tiny", "sr", "train"): "tiny-sr",
    ("tiny", "translation", "search"): "tiny-translation", ("tiny", "translation", "train"): "tiny-translation",
    ("paper", "sr", "search"): "paper-sr", ("paper", "sr", "train"): "paper-sr",
    ("paper", "translation", "search"): "paper-translation-search",
    ("paper", "translation", "train"): "paper-translation-train",
    **{("pixel", task, phase): "pixel" for task in ("sr", "translation") for phase in ("pretrain", "search", "train")},
    # the main job's default: tiny for SR; pixel L1 alone for translation, where it measured 1-2 dB closer to
    # the teacher on held-out images than the perceptual tiny loss (BENCHMARKS.md, issue 17)
    ("cpu", "sr", "pretrain"): "pixel", ("cpu", "sr", "search"): "tiny-sr", ("cpu", "sr", "train"): "tiny-sr",
    **{("cpu", "translation", phase): "pixel" for phase in ("pretrain", "search", "train")},
}


def make_loss(setting: str, teacher, vgg_weights: Path | None, device, phase: str = "search"):
    """The distillation loss of a preset's loss setting (``tiny``, ``cpu``, ``paper``, ``pixel``) for the teacher's task.
    Without VGG weights the paper presets fall back to the teacher's own early layers (recorded)."""
    from agd.distill import DistillLoss

    key = (setting, teacher.info.task, phase)
    if key not in LOSS_FOR:
        raise AgdError(f"loss setting {setting!r}: unknown (tiny, cpu, paper or pixel)")
    return DistillLoss(LOSS_FOR[key], teacher=teacher, vgg_weights=vgg_weights, device=device)


def run_search_job(job: SearchJob):
    from agd.cost import count_macs
    from agd.runs import RunDir
    from agd.search import Search, get_search_config, macs_budget, write_results
    from agd.search import data as D
    from agd.space import SearchSpace, get_config
    from agd.teachers import load_teacher

    cfg = get_search_config(job.preset, **(job.overrides or {}))
    run = RunDir.open(job.out, resume=job.resume)
    if job.resume:
        saved = run.read_config()
        cfg = type(cfg).from_dict(saved["search"])
        job.ratio = None
        if saved["budget"]["kind"] == "macs":
            job.macs, job.latency = saved["budget"]["macs"], None
        else:
            job.macs, job.latency = None, saved["budget"]["value"]
            job.latency_table, job.target = Path(saved["budget"]["latency_table"]), saved["budget"]["target"]
            job.latency_size = tuple(saved["budget"]["size"]) if saved["budget"].get("size") else None
    device = torch.device(job.device)
    teacher = load_teacher(job.teacher, device=device)
    space_name = cfg.space or {"translation": "translation", "sr": f"sr-x{teacher.info.scale}"}[teacher.info.task]
    space = SearchSpace(get_config(space_name))
    tables = None
    if job.latency is not None:
        from agd.search.budget import latency_budget

        if job.macs is not None or job.ratio is not None:
            raise AgdError("budget: give one of --macs, --ratio and --latency")
        if job.latency_table is None:
            raise AgdError("--latency needs --latency-table (build one with: agd latency-table build --target T)")
        budget, tables = latency_budget(space, job.latency, job.latency_table, job.target, hw=job.latency_size)
    else:
        teacher_macs = None
        if job.ratio is not None:
            teacher_macs = count_macs(teacher.module, (1, space.config.in_ch, *space.config.reference_size))
        budget = macs_budget(space, macs=job.macs, ratio=job.ratio, teacher_macs=teacher_macs)
    if job.resume:
        job.exclude = tuple(saved.get("exclude", ()))
    images = D.load_images(job.images, exclude=job.exclude)
    console = _console(job.quiet)
    console.print(f"teacher {teacher.info.name}: preparing {len(images)} images (teacher outputs are cached)", highlight=False)
    with console.status("teacher pass") as status:
        items = D.prepare(images, teacher, cache_dir=job.out.parent / ".teacher-cache", max_side=cfg.max_side,
                          device=device, on_image=lambda name: status.update(f"teacher pass: {name} (cached after the first run)"))
    loss = make_loss(cfg.loss, teacher, job.vgg_weights, device)
    pretrain_loss = make_loss(cfg.loss, teacher, job.vgg_weights, device, phase="pretrain")
    if not job.resume:
        run.write_config({"command": "search", "teacher": {"spec": job.teacher, "identity": teacher.identity},
                          "images": str(job.images) if job.images else "built-in samples",
                          "exclude": list(job.exclude), "image_names": [n for n, _ in images],
                          "budget": {"kind": budget.kind, "value": budget.value,
                                     "macs": budget.value if budget.kind == "macs" else None,
                                     "latency_table": str(job.latency_table) if job.latency_table else None,
                                     "target": job.target, "size": list(budget.size) if budget.size else None},
                          "space": space_name, "search": cfg.to_dict(), "loss": loss.describe(),
                          "pretrain_loss": pretrain_loss.describe()})
    search = Search(cfg, teacher, items, budget, loss, run, device=device, tables=tables, progress=None,
                    pretrain_loss_fn=pretrain_loss)
    if not job.resume and search.rank == 0:
        from agd.io import atomic_write_json
        from agd.search.profile import matmul_peak_gflops

        atomic_write_json(run.path / "profile.json", {"step": search.profile(),
                                                       "peak_gflops": matmul_peak_gflops(device)})
    result = _with_progress(search, job, console)
    if search.rank == 0:
        write_results(run, search, result)
        cost = (f"{result.cost / 1e9:.3f} GMACs" if budget.kind == "macs" else
                f"{result.cost:.3f} ms predicted at {'x'.join(map(str, budget.size))}")
        console.print(f"genotype {run.path / 'genotype.json'}: {cost} ({result.cost / budget.value:.3f} x budget), "
                      f"held-out loss {result.heldout_loss:.5f}", highlight=False)
    return run, search, result


def _console(quiet: bool):
    from rich.console import Console

    return Console(quiet=quiet)


import contextlib


@contextlib.contextmanager
def _progress_bar(console, quiet: bool, title: str, total: int, expected_unit: float = 1e9):
    """A progress bar with ETA; yields the per-step callback (``rec`` dicts with ``step`` and losses)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*cols, console=console, disable=quiet) as progress:
        task = progress.add_task(title, total=total)

        def on_step(rec: dict) -> None:
            if "event" in rec:
                progress.console.print(f"warning: {rec['event']}", highlight=False)
                return
            loss = rec.get("loss_w", rec.get("loss", float("nan")))
            desc = f"{rec.get('phase', title)} loss {loss:.4f}"
            if "expected" in rec:
                desc += (f" E[cost] {rec['expected'] / expected_unit:.2f}{'G' if expected_unit == 1e9 else 'ms'}"
                         f" λ {rec['lam']:.2f}")
            progress.update(task, completed=rec["step"] + 1, description=desc)

        yield on_step


def _with_progress(search, job: SearchJob, console):
    unit = 1e9 if search.budget.kind == "macs" else 1.0
    with _progress_bar(console, job.quiet or search.rank != 0, "search", search.cfg.total_steps, unit) as on_step:
        search.progress = on_step
        return search.run_loop(resume=job.resume)
