"""The search: distillation-guided, resource-constrained differentiable architecture search.

Procedure (AutoGAN-Distiller's, with a budget controller that needs no tuning):
1. pretraining, ``pretrain_steps``: weights only, uniform α, the sandwich rule (largest, smallest and a
   random width per step, gradients accumulated), on the weights half of the images, with the
   pretraining loss (SR: pixel L1 alone, as AGD);
2. search, ``search_steps``: alternating first-order steps, an architecture step (Adam on α and the width
   logits; distillation loss on the architecture half + the budget term, then dual ascent on λ) and a
   weight step (distillation loss on the weights half), Gumbel temperature annealed; with ``sandwich``
   each step also runs the largest and the smallest widths and averages the three losses (AGD);
3. every ``eval_every`` steps and at the end: the most probable architecture within ±tolerance of the
   budget is derived and scored by the distillation loss of the supernet fixed to it on central crops of
   the selection images, which neither step trains on; the best scoring one is kept, not the last.

In both phases every forward chooses operators as ``op_sampling`` (SR) or ``translation_op_sampling``
says: AGD's softmax-weighted mixture of all candidates, or one candidate per layer drawn from softmax(α)
(single-path; α learns through the sample's straight-through gate, as the widths do).

The supernet runs in the derived student's convention (:func:`agd.arch.student.image_forward`: translation
networks see [-1, 1]), so a fixed supernet and ``Student(derive(g, supernet))`` compute the same image.

Every batch is a pure function of (seed, phase, step) and all other randomness comes from torch's RNG,
which is checkpointed, so a resumed run equals an uninterrupted one. Under torchrun every process takes
its slice of each global batch and DistributedDataParallel averages the gradients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from agd.arch import Genotype
from agd.arch.student import image_forward
from agd.io import AgdError, atomic_path, atomic_write_json, atomic_write_text
from agd.loop import CheckpointLoop, load_parts, parts_state
from agd.runs import RunDir
from agd.search import data as D
from agd.search.budget import Budget, DualController, derive_within_budget
from agd.search.config import SearchConfig
from agd.search.plots import plot_search
from agd.search.profile import step_lines, step_profile
from agd.search.supernet import Supernet, TemperatureSchedule
from agd.space import SearchSpace, get_config, sr_space_for_scale

PRETRAIN, SEARCH = 0, 1


class _WithCost(nn.Module):
    """The supernet and its expected cost in one forward, so DDP sees every architecture parameter used."""

    def __init__(self, supernet: Supernet, tables: list[torch.Tensor], overhead: float) -> None:
        super().__init__()
        self.supernet = supernet
        self.tables = tables
        self.overhead = overhead

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the [0, 1] output image of [0, 1] images ``x``, the expected cost)."""
        cost, _ = self.supernet.expected_cost(self.tables)
        return image_forward(self.supernet, x, self.supernet.space.kind), cost + self.overhead


@dataclass
class SearchResult:
    genotype: Genotype
    heldout_loss: float
    cost: float
    argmax_genotype: Genotype
    history: list[dict[str, Any]] = field(default_factory=list)


def default_space(teacher) -> str:
    """The search space for the teacher's task and scale (an SR scale without a space: an error naming those
    that exist)."""
    if teacher.info.task == "translation":
        return "translation"
    try:
        return sr_space_for_scale(teacher.info.scale)
    except AgdError as e:
        raise AgdError(f"teacher {teacher.source or teacher.info.name}: {e}") from None


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _finite(*xs: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(x).all()) for x in xs)


class Search:
    """One search run; ``run()`` executes it (resuming from the run folder's checkpoint when asked). The space
    is ``space_config`` when given (e.g. narrowed to fit the budget), else ``cfg.space`` or the teacher's
    default."""

    def __init__(self, cfg: SearchConfig, teacher, items: list[D.DistillImage], budget: Budget,
                 loss_fn: Callable[..., tuple[torch.Tensor, dict]], run: RunDir, *, device: str | torch.device = "cpu",
                 tables: list[torch.Tensor] | None = None, progress: Callable[[dict], None] | None = None,
                 pretrain_loss_fn: Callable[..., tuple[torch.Tensor, dict]] | None = None,
                 space_config=None) -> None:
        self.cfg, self.teacher, self.budget, self.loss_fn, self.run = cfg, teacher, budget, loss_fn, run
        self.pretrain_loss_fn = pretrain_loss_fn or loss_fn
        self.device = torch.device(device)
        self.rank, self.world = _world()
        if cfg.batch % self.world:
            raise AgdError(f"search: the batch ({cfg.batch}) must be divisible by the number of processes ({self.world})")
        space_name = cfg.space or default_space(teacher)
        self.space = SearchSpace(space_config if space_config is not None else get_config(space_name))
        if self.space.kind != teacher.info.task:
            raise AgdError(f"search: the {space_name} space is for {self.space.kind}, the teacher "
                           f"{teacher.info.name} does {teacher.info.task}")
        if self.space.scale != teacher.info.scale:
            raise AgdError(f"search: the {space_name} space upscales x{self.space.scale}, the teacher "
                           f"{teacher.info.name} x{teacher.info.scale}")
        self.weights_half, self.arch_half, self.selection = D.split(items)
        self.patch = cfg.crop(self.space.kind)
        self.op_sampling = cfg.ops_for(self.space.kind)
        D.check_patch(items, self.patch)
        torch.manual_seed(cfg.seed)
        self.supernet = Supernet(self.space).to(self.device)
        cl = cfg.channels_last and self.device.type == "cpu"  # measured on CPU only; the GPU figures are NCHW
        self.memory_format = torch.channels_last if cl else torch.contiguous_format
        self.supernet.to(memory_format=self.memory_format)
        if tables is None:
            tables = self.space.macs_tables()
        # NaN marks invalid pairs (identity between unequal widths): the derivation skips them, the
        # expected cost counts them as 0 (the supernet pads)
        self.raw_tables = [t.cpu() for t in tables]
        self.tables = [t.nan_to_num(0.0).to(self.device) for t in tables]
        self.model = _WithCost(self.supernet, self.tables, budget.overhead)
        self.ddp = self.model
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=True)
        self.opt_w = torch.optim.Adam(self.supernet.weight_parameters(), lr=cfg.weight_lr, betas=(0.5, 0.999))
        self.opt_a = torch.optim.Adam(self.supernet.arch_parameters(), lr=cfg.arch_lr, betas=(0.5, 0.999),
                                      weight_decay=cfg.arch_weight_decay)
        self.ctrl = DualController(budget.value, step=cfg.dual_step)
        self.tau = TemperatureSchedule(cfg.tau_start, cfg.tau_end, max(cfg.search_steps, 1))
        self.step = 0
        self.lr_scale = 1.0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.progress = progress
        self.heldout = D.center_crops(self.selection, self.patch, self.space.scale)
        self.loop = CheckpointLoop(self, run, "search", writes=self.rank == 0)

    # ---------------------------------------------------------------- state
    def _parts(self) -> dict[str, Any]:
        return {"supernet": self.supernet, "opt_w": self.opt_w, "opt_a": self.opt_a, "ctrl": self.ctrl}

    def state(self) -> dict[str, Any]:
        return {"step": self.step, **parts_state(self._parts()), "history": self.history, "best": self.best,
                "lr_scale": self.lr_scale, "world": self.world}

    def load(self, s: dict[str, Any]) -> None:
        if s.get("world", 1) != self.world:
            raise AgdError(f"--resume: the run was made with {s.get('world', 1)} processes, now {self.world}")
        self.step = int(s["step"])
        load_parts(self._parts(), s)
        self.history, self.best, self.lr_scale = list(s["history"]), s["best"], float(s["lr_scale"])

    def rolled_back(self, failed: int, what: str) -> None:
        """After :class:`agd.loop.CheckpointLoop` restored the last checkpoint: halve both learning rates."""
        self.lr_scale *= 0.5
        for opt in (self.opt_w, self.opt_a):
            for g in opt.param_groups:
                g["lr"] *= 0.5
        msg = (f"{what} at step {failed}: rolled back to step {self.step} and halved the learning rates "
               f"(now x{self.lr_scale:g})")
        self.history.append({"step": self.step, "event": msg})
        if self.progress:
            self.progress({"event": msg})

    # ---------------------------------------------------------------- steps
    def _batch(self, items: list[D.DistillImage], phase: int, step: int) -> dict[str, torch.Tensor | None]:
        idx = list(range(self.rank, self.cfg.batch, self.world))
        b = D.batch(items, size=self.cfg.batch, patch=self.patch, scale=self.space.scale, seed=self.cfg.seed,
                    phase=phase, step=step, indices=idx)
        return {k: (v.to(self.device).contiguous(memory_format=self.memory_format) if v is not None else None)
                for k, v in b.items()}

    def _distill(self, out: torch.Tensor, b: dict, loss_fn=None) -> torch.Tensor:
        loss, _ = (loss_fn or self.loss_fn)(out, b["target"], b["gt"])
        return loss

    def _clip(self, params: list[nn.Parameter]) -> None:
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)

    def pretrain_step(self) -> dict[str, float]:
        b = self._batch(self.weights_half, PRETRAIN, self.step)
        self.opt_w.zero_grad(set_to_none=True)
        self.opt_a.zero_grad(set_to_none=True)
        total = 0.0
        for mode in ("max", "min", "random"):
            self.supernet.set_sampling(ops=self.op_sampling, widths=mode)
            out, _ = self.ddp(b["inp"])
            loss = self._distill(out, b, self.pretrain_loss_fn) / 3
            if not _finite(loss):
                return {"nonfinite": 1.0}
            loss.backward()
            total += float(loss.detach())
        self._clip(self.supernet.weight_parameters())
        self.opt_w.step()
        return {"loss_w": total}

    def _sandwich_backward(self, b: dict, tau: float, with_cost: bool,
                           t: dict[str, float]) -> tuple[float, torch.Tensor | None] | None:
        """Forward and backward of the sampled widths (Gumbel) and, with ``sandwich``, of the largest and
        smallest widths, each loss weighted 1/n; the budget term (``with_cost``) is added once, to the
        sampled forward. Adds the milliseconds of each phase to ``t``. Returns (mean distillation loss,
        expected cost) or None on a non-finite loss."""
        modes = ("gumbel", "max", "min") if self.cfg.sandwich else ("gumbel",)
        total, cost_seen = 0.0, None
        for mode in modes:
            self.supernet.set_sampling(ops=self.op_sampling, widths=mode, tau=tau)
            t0 = time.perf_counter()
            out, cost = self.ddp(b["inp"])
            t1 = time.perf_counter()
            loss_d = self._distill(out, b) / len(modes)
            loss = loss_d
            if with_cost and mode == "gumbel":
                cost_seen = cost
                loss = loss + self.ctrl.penalty(cost).to(loss.dtype)
            if not _finite(loss, cost):
                return None
            t2 = time.perf_counter()
            loss.backward()
            t3 = time.perf_counter()
            for k, v in (("forward", t1 - t0), ("loss", t2 - t1), ("backward", t3 - t2)):
                t[k] = t.get(k, 0.0) + v * 1e3
            total += float(loss_d.detach())
        self.supernet.set_sampling(widths="gumbel")
        return total, cost_seen

    def _opt_step(self, opt, params, t: dict[str, float]) -> None:
        t0 = time.perf_counter()
        self._clip(params)
        opt.step()
        t["optimizer"] = t.get("optimizer", 0.0) + (time.perf_counter() - t0) * 1e3

    def _half_step(self, items: list[D.DistillImage], step: int, tau: float, arch: bool,
                   t: dict[str, float]) -> tuple[float, torch.Tensor | None] | None:
        """One of a search step's two halves on batch ``step`` of ``items``: the architecture step (``arch``:
        with the budget term, Adam on α and the width logits) or the weight step; None on a non-finite loss
        (nothing updated)."""
        b = self._batch(items, SEARCH, step)
        self.opt_a.zero_grad(set_to_none=True)
        self.opt_w.zero_grad(set_to_none=True)
        res = self._sandwich_backward(b, tau, with_cost=arch, t=t)
        if res is not None:
            opt, params = (self.opt_a, self.supernet.arch_parameters()) if arch else \
                (self.opt_w, self.supernet.weight_parameters())
            self._opt_step(opt, params, t)
        return res

    def search_step(self) -> dict[str, float]:
        s = self.step - self.cfg.pretrain_steps
        tau = self.tau.at(s)
        t: dict[str, float] = {}
        res = self._half_step(self.arch_half, 2 * s, tau, True, t)
        if res is None:
            return {"nonfinite": 1.0}
        loss_a, cost = res
        lam = self.ctrl.update(float(cost.detach()))
        res = self._half_step(self.weights_half, 2 * s + 1, tau, False, t)
        if res is None:
            return {"nonfinite": 1.0}
        loss_w = res[0]
        return {"loss_a": loss_a, "loss_w": loss_w, "expected": float(cost.detach()), "lam": lam, "tau": tau,
                **{f"ms_{k}": v for k, v in t.items()}}

    def profile(self) -> dict[str, Any]:
        """The once-per-run step profile (:func:`agd.search.profile.step_profile`) of a search step: its
        forwards' FLOPs and the loss terms' milliseconds; torch's RNG and the weights are left as they were."""
        b = self._batch(self.arch_half, SEARCH, 0)
        modes = ("gumbel", "max", "min") if self.cfg.sandwich else ("gumbel",)

        def forward(mode: str):
            def run() -> torch.Tensor:
                self.supernet.set_sampling(ops=self.op_sampling, widths=mode, tau=self.cfg.tau_start)
                return self.model(b["inp"])[0]
            return run

        try:
            return step_profile([forward(m) for m in modes], self.loss_fn, b, 2 * len(modes))
        finally:
            self.supernet.set_sampling(widths="gumbel")

    # ---------------------------------------------------------------- derivation
    def derive(self) -> Genotype:
        layers = self.supernet.mixed_layers
        with torch.no_grad():
            return derive_within_budget(self.space, [m.op_probs() for m in layers], [m.width_probs() for m in layers],
                                        self.raw_tables, self.budget.value, tol=self.cfg.tolerance,
                                        overhead=self.budget.overhead)

    def heldout_loss(self, g: Genotype) -> float:
        self.supernet.fix(g)
        try:
            with torch.no_grad():
                b = {k: (v.to(self.device) if v is not None else None) for k, v in self.heldout.items()}
                out, _ = self.model(b["inp"])
                return float(self._distill(out, b))
        finally:
            self.supernet.unfix()

    def cost_of(self, g: Genotype) -> float:
        total, c_in = self.budget.overhead, self.space.config.in_ch
        for i, (spec, ch) in enumerate(zip(self.space.layers, g.layers)):
            ins = self.space.in_choices(i)
            total += float(self.tables[i][spec.ops.index(ch.op), ins.index(c_in), spec.widths.index(ch.width)])
            c_in = ch.width
        return total

    def evaluate(self) -> dict[str, Any]:
        layers = self.supernet.mixed_layers
        g = self.derive()
        loss = self.heldout_loss(g)
        argmax = self.supernet.genotype()
        rec = {"step": self.step, "heldout_loss": loss, "cost": self.cost_of(g), "argmax_cost": self.cost_of(argmax),
               "expected": float(self.model.supernet.expected_cost(self.tables)[0].detach()) + self.budget.overhead,
               "lam": self.ctrl.lam, "genotype": g.to_dict(),
               "op_probs": {m.spec.name: m.op_probs().detach().cpu().tolist() for m in layers if m.alpha is not None},
               "width_probs": {m.spec.name: m.width_probs().detach().cpu().tolist() for m in layers if m.beta is not None}}
        self.history.append(rec)
        if self.best is None or loss < self.best["heldout_loss"]:
            self.best = {"step": self.step, "heldout_loss": loss, "cost": rec["cost"], "genotype": rec["genotype"]}
        return rec

    # ---------------------------------------------------------------- loop
    def take_step(self) -> dict[str, Any]:
        """Step ``self.step``: a pretraining step, then search steps (:class:`agd.loop.Steps`)."""
        pretrain = self.step < self.cfg.pretrain_steps
        rec = self.pretrain_step() if pretrain else self.search_step()
        return rec if rec.get("nonfinite") else {"phase": "pretrain" if pretrain else "search", **rec}

    def after_step(self, rec: dict[str, Any]) -> None:
        """Every ``eval_every`` search steps and after the last: derive and score (:meth:`evaluate`)."""
        s = self.step - self.cfg.pretrain_steps
        if rec["phase"] == "search" and (s % self.cfg.eval_every == 0 or self.step == self.cfg.total_steps):
            rec["eval"] = self.evaluate()
        if self.progress:
            self.progress(rec)

    def run_loop(self, resume: bool = False) -> SearchResult:
        self.loop.run_to(self.cfg.total_steps, self.cfg.checkpoint_every, resume)
        best = Genotype.from_dict(self.best["genotype"], "best genotype")
        return SearchResult(best, self.best["heldout_loss"], self.best["cost"], self.supernet.genotype(), self.history)


def write_results(run: RunDir, search: Search, result: SearchResult) -> None:
    """genotype.json, argmax_genotype.json, history.json, supernet.safetensors, plots, report.md (with the
    step profile when the run folder holds ``profile.json``)."""
    result.genotype.save(run.path / "genotype.json")
    result.argmax_genotype.save(run.path / "argmax_genotype.json")
    atomic_write_json(run.path / "history.json", result.history)
    with atomic_path(run.path / "supernet.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in search.supernet.state_dict().items()}, str(tmp))
    plots = plot_search(run.read_log(), result.history, search.budget, run.path / "plots")
    b = search.budget
    lines = [
        "# agd search", "",
        f"- teacher: {search.teacher.info.name} ({search.teacher.identity})",
        f"- space: {search.space.kind} ({len(search.space.layers)} layers, {search.space.num_architectures():.3e} architectures)",
        f"- budget: {b.describe()}; derived within ±{search.cfg.tolerance:.0%}",
        f"- best derived architecture: step {search.best['step']}, held-out distillation loss "
        f"{result.heldout_loss:.5f}, cost {result.cost / 1e9 if b.kind == 'macs' else result.cost:.4g}"
        f"{' GMACs' if b.kind == 'macs' else ' ms'} ({result.cost / b.value:.3f} x budget)",
        f"- plain argmax architecture: {search.cost_of(result.argmax_genotype) / b.value:.3f} x budget", "",
        "| layer | op | width |", "|---|---|---|",
    ]
    lines += [f"| {c.name} | {c.op} | {c.width} |" for c in result.genotype.layers]
    lines += ["", "## Where the search step's time goes", ""] + step_lines(run, [r for r in run.read_log()
                                                                                if r.get("phase") == "search"])
    lines += [""] + [f"![{p.stem}](plots/{p.name})" for p in plots]
    atomic_write_text(run.path / "report.md", "\n".join(lines) + "\n")
