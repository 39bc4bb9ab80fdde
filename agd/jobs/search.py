"""The search job: from a teacher and images to a genotype within a budget, in a run folder (``agd search``,
and the first step of ``agd compress``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console

from agd.cost import count_macs
from agd.cost.latency import LatencyTable
from agd.distill.settings import make_loss
from agd.io import AgdError, atomic_write_json
from agd.jobs.progress import progress_bar
from agd.runs import BudgetRecord, RunDir
from agd.search import Search, default_space, get_search_config, macs_budget, write_results
from agd.search import data as D
from agd.search.budget import fit_space_to_budget, latency_budget, parse_macs
from agd.search.profile import matmul_peak_gflops
from agd.space import SearchSpace, get_config
from agd.space.config import config_from_dict, config_to_dict
from agd.teachers import TeacherSpec, load_teacher, resolve_on_resume


@dataclass
class SearchJob:
    teacher: Any = None  # a TeacherSpec or its source; None: the default teacher, or on --resume the recorded one
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
    precision: str | None = None  # the latency table must be of this precision (None: the table's)
    runtime: str | None = None  # and of this runtime (None: the table's)
    device: str = "cpu"
    resume: bool = False
    vgg_weights: Path | None = None
    overrides: dict[str, Any] | None = None
    quiet: bool = False


def init_distributed(device: str) -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def teacher_record(teacher) -> dict[str, Any]:
    """What a run's config.yaml says of its teacher: how to load it again and its identity."""
    return {"spec": teacher.spec.to_dict(), "identity": teacher.identity}


def check_same_teacher(teacher, saved: Any, out: Path) -> None:
    """On --resume: the teacher must be the one the run began with (its identity changes with its weights)."""
    ident = saved.get("identity") if isinstance(saved, dict) else saved
    if ident and ident != teacher.identity:
        raise AgdError(f"--resume {out}: teacher {teacher.source} is not the one the run began with (its weights "
                       "or value range changed); start a new run")


def resumed_job(job: SearchJob, saved: dict[str, Any]) -> SearchJob:
    """The job that continues the run whose config.yaml is ``saved``: its recorded budget and held-out images."""
    return replace(job, exclude=tuple(saved.get("exclude", ())), **BudgetRecord.from_dict(saved["budget"]).job_fields())


def run_search_job(job: SearchJob):
    cfg = get_search_config(job.preset, **(job.overrides or {}))
    run = RunDir.open(job.out, resume=job.resume)
    given = None if job.teacher is None else TeacherSpec.of(job.teacher)
    saved: dict[str, Any] = {}
    if job.resume:
        saved = run.read_config()
        given = resolve_on_resume(given, (saved.get("teacher") or {}).get("spec"), str(job.out))
        cfg = type(cfg).from_dict(saved["search"])
        job = resumed_job(job, saved)
    device = torch.device(job.device)
    teacher = load_teacher(given, device=device)
    if job.resume:
        check_same_teacher(teacher, saved.get("teacher"), job.out)
    space_name = cfg.space or default_space(teacher)
    space_cfg = get_config(space_name)
    if job.resume and saved.get("space_config"):
        space_cfg = config_from_dict(saved["space_config"], f"{job.out}/config.yaml space_config")
    space = SearchSpace(space_cfg)
    tables, narrowed_by = None, saved.get("space_narrowed", 1.0)
    if job.latency is not None:
        if job.macs is not None or job.ratio is not None:
            raise AgdError("budget: give one of --macs, --ratio and --latency")
        if job.latency_table is None:
            raise AgdError("--latency needs --latency-table (build one with: agd latency-table build --target T)")
        budget, tables = latency_budget(space, job.latency, job.latency_table, job.target, hw=job.latency_size,
                                        precision=job.precision, runtime=job.runtime)
    else:
        teacher_macs = None
        if job.ratio is not None:
            teacher_macs = count_macs(teacher.module, (1, space.config.in_ch, *space.config.reference_size))
        if cfg.space is None and not job.resume:  # the default space, narrowed for a compact teacher's budget
            value = (job.ratio * teacher_macs if job.ratio is not None else None if job.macs is None
                     else parse_macs(job.macs) if isinstance(job.macs, str) else float(job.macs))
            if value is not None:
                space_cfg, narrowed_by = fit_space_to_budget(space_cfg, value)
                space = SearchSpace(space_cfg)
        budget = macs_budget(space, macs=job.macs, ratio=job.ratio, teacher_macs=teacher_macs)
    images = D.load_images(job.images, exclude=job.exclude)
    console = Console(quiet=job.quiet)
    console.print(teacher.describe(), highlight=False)
    console.print(f"teacher {teacher.info.name}: preparing {len(images)} images (teacher outputs are cached)", highlight=False)
    with console.status("teacher pass") as status:
        items = D.prepare(images, teacher, cache_dir=job.out.parent / ".teacher-cache", max_side=cfg.max_side,
                          device=device, on_image=lambda name: status.update(f"teacher pass: {name} (cached after the first run)"))
    loss = make_loss(cfg.loss, teacher, job.vgg_weights, device)
    pretrain_loss = make_loss(cfg.loss, teacher, job.vgg_weights, device, phase="pretrain")
    if loss.fallback and not job.resume:
        console.print(f"loss {loss.cfg.name}: {loss.fallback}", highlight=False)
    if not job.resume:
        table = LatencyTable.load(job.latency_table) if job.latency_table is not None else None
        record = BudgetRecord(kind=budget.kind, value=budget.value,
                              latency_table=str(job.latency_table) if job.latency_table else None, target=job.target,
                              size=budget.size, deployment=budget.deployment,
                              precision=table.precision if table else None, runtime=table.runtime if table else None)
        run.write_config({"command": "search", "teacher": teacher_record(teacher),
                          "images": str(job.images) if job.images else "built-in samples",
                          "exclude": list(job.exclude), "image_names": [n for n, _ in images],
                          "budget": record.to_dict(),
                          "space": space_name, "space_config": config_to_dict(space_cfg), "space_narrowed": narrowed_by,
                          "search": cfg.to_dict(), "loss": loss.describe(),
                          "pretrain_loss": pretrain_loss.describe()})
    if budget.kind == "latency":
        console.print(f"budget: {budget.describe()} at {'x'.join(map(str, budget.size))} (latency table "
                      f"{job.latency_table})", highlight=False)
    if narrowed_by != 1.0:
        console.print(f"space {space_name}: its widths narrowed to {narrowed_by:g} so that networks within the budget "
                      f"exist ({space.config.kind}: {_widths(space_cfg)})", highlight=False)
    search = Search(cfg, teacher, items, budget, loss, run, device=device, tables=tables, progress=None,
                    pretrain_loss_fn=pretrain_loss, space_config=space_cfg)
    if not job.resume and search.rank == 0:
        atomic_write_json(run.path / "profile.json", {"step": search.profile(),
                                                       "peak_gflops": matmul_peak_gflops(device)})
    unit = 1e9 if search.budget.kind == "macs" else 1.0
    with progress_bar(console, job.quiet or search.rank != 0, "search", search.cfg.total_steps, unit) as on_step:
        search.progress = on_step
        result = search.run_loop(resume=job.resume)
    if search.rank == 0:
        write_results(run, search, result)
        cost = (f"{result.cost / 1e9:.3f} GMACs" if budget.kind == "macs" else
                f"{result.cost:.3f} ms predicted at {'x'.join(map(str, budget.size))}")
        console.print(f"genotype {run.path / 'genotype.json'}: {cost} ({result.cost / budget.value:.3f} x budget), "
                      f"held-out loss {result.heldout_loss:.5f}", highlight=False)
    return run, search, result


def _widths(c) -> str:
    return f"nf {c.nf}" if c.kind == "sr" else f"stem {c.stem_width}, down {list(c.down_widths)}, up {list(c.up_widths)}"
