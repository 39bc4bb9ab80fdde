"""Retraining a derived student by distillation from the teacher (``agd train``).

From scratch or with the supernet's inherited weights; optional ground-truth L1 for SR; an exponential
moving average of the weights (``torch.optim.swa_utils``) is what gets saved and evaluated. Batches are a
pure function of (seed, step) and the RNG is checkpointed, so ``--resume`` continues exactly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from agd.arch.student import Student, save_weights
from agd.io import AgdError, atomic_write_text
from agd.loop import CheckpointLoop, load_parts, parts_state
from agd.runs import RunDir
from agd.search import data as D
from agd.search.profile import step_lines, step_profile

TRAIN_PHASE = 2


@dataclass(frozen=True)
class TrainConfig:
    loss: str = "tiny"
    patch: int = 16  # SR crop, in input (LR) pixels
    translation_patch: int = 64  # translation crop (see agd.search.config on why it is larger)
    translation_variants: int = 0  # translation: teacher-labelled tone/colour variants per image (agd.search.data)
    batch: int = 4
    steps: int = 300
    lr: float = 5e-4
    lr_final: float = 2e-5  # cosine decay to this
    ema: float = 0.99
    gt_weight: float = 0.0  # SR: weight of an L1 term against the ground truth
    checkpoint_every: int = 50
    max_side: int | None = 96
    grad_clip: float = 5.0
    channels_last: bool = True  # NHWC activations: 1.2x faster training steps on this CPU (BENCHMARKS.md)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def crop(self, task: str) -> int:
        return self.translation_patch if task == "translation" else self.patch


TRAIN_PRESETS = {
    "tiny": TrainConfig(),
    # loss "cpu": the tiny SR loss, pixel L1 for translation; variants and 256 px: BENCHMARKS.md, issue 17
    "cpu": TrainConfig(loss="cpu", patch=24, batch=8, steps=800, lr=1e-3, ema=0.995, checkpoint_every=100,
                       max_side=256, translation_variants=4),
    "small": TrainConfig(loss="paper", patch=32, batch=8, steps=2000, ema=0.999, checkpoint_every=200, max_side=256),
    "paper": TrainConfig(loss="paper", patch=64, batch=16, steps=200000, ema=0.999, checkpoint_every=2000,
                         max_side=None, lr=1e-4, lr_final=1e-6),
}


def get_train_config(name: str, **overrides: Any) -> TrainConfig:
    if name not in TRAIN_PRESETS:
        raise AgdError(f"train preset {name!r}: unknown (presets: {', '.join(TRAIN_PRESETS)})")
    return replace(TRAIN_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


class Trainer:
    def __init__(self, cfg: TrainConfig, student: Student, items: list[D.DistillImage], loss_fn, run: RunDir,
                 *, device="cpu", progress: Callable[[dict], None] | None = None) -> None:
        self.cfg, self.student, self.items, self.loss_fn, self.run = cfg, student, items, loss_fn, run
        self.device = torch.device(device)
        self.patch = cfg.crop(student.task)
        D.check_patch(items, self.patch)
        self.student.to(self.device).train()
        cl = cfg.channels_last and self.device.type == "cpu"  # measured on CPU only
        self.memory_format = torch.channels_last if cl else torch.contiguous_format
        self.student.to(memory_format=self.memory_format)
        self.ema = AveragedModel(self.student, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema))
        self.opt = torch.optim.Adam(self.student.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(cfg.steps, 1), eta_min=cfg.lr_final)
        self.step = 0
        self.progress = progress
        self.loop = CheckpointLoop(self, run, "train")

    def _parts(self) -> dict[str, Any]:
        return {"student": self.student, "ema": self.ema, "opt": self.opt, "sched": self.sched}

    def state(self) -> dict[str, Any]:
        return {"step": self.step, **parts_state(self._parts())}

    def load(self, s: dict[str, Any]) -> None:
        self.step = int(s["step"])
        load_parts(self._parts(), s)

    def rolled_back(self, failed: int, what: str) -> None:
        """After :class:`agd.loop.CheckpointLoop` restored the last checkpoint: halve the learning rate."""
        for g in self.opt.param_groups:
            g["lr"] *= 0.5
        self.sched.base_lrs = [lr * 0.5 for lr in self.sched.base_lrs]
        if self.progress:
            self.progress({"event": f"{what} at step {failed}: rolled back to step {self.step} and halved the "
                                    "learning rate"})

    def _batch(self, step: int) -> dict[str, torch.Tensor | None]:
        b = D.batch(self.items, size=self.cfg.batch, patch=self.patch, scale=self.student.scale,
                    seed=self.cfg.seed, phase=TRAIN_PHASE, step=step)
        return {k: (v.to(self.device).contiguous(memory_format=self.memory_format) if v is not None else None)
                for k, v in b.items()}

    def take_step(self) -> dict[str, float]:
        """Training step ``self.step`` (:class:`agd.loop.Steps`): forward, loss, backward, Adam, EMA."""
        b = self._batch(self.step)
        t0 = time.perf_counter()
        out = self.student(b["inp"])
        t1 = time.perf_counter()
        loss, terms = self.loss_fn(out, b["target"], b["gt"])
        if self.cfg.gt_weight and b["gt"] is not None:
            loss = loss + self.cfg.gt_weight * (out - b["gt"]).abs().mean()
        if not torch.isfinite(loss):
            return {"nonfinite": 1.0}
        self.opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.ema.update_parameters(self.student)
        t4 = time.perf_counter()
        return {"loss": float(loss.detach()), "lr": self.sched.get_last_lr()[0],
                **{k: float(v.detach()) for k, v in terms.items()},
                "ms_forward": (t1 - t0) * 1e3, "ms_loss": (t2 - t1) * 1e3, "ms_backward": (t3 - t2) * 1e3,
                "ms_optimizer": (t4 - t3) * 1e3}

    def profile(self) -> dict:
        """The once-per-run step profile (:func:`agd.search.profile.step_profile`): the student's forward
        FLOPs and each loss term's milliseconds; RNG and weights untouched."""
        b = self._batch(0)
        return step_profile([lambda: self.student(b["inp"])], self.loss_fn, b, 1)

    def after_step(self, rec: dict[str, Any]) -> None:
        if self.progress:
            self.progress(rec)

    def run_loop(self, resume: bool = False) -> nn.Module:
        self.loop.run_to(self.cfg.steps, self.cfg.checkpoint_every, resume)
        return self.ema.module

    def save(self) -> None:
        save_weights(self.ema.module.net, self.run.path / "student.safetensors",
                     {"genotype": self.student.genotype.to_json(), "steps": str(self.step)})
        self.student.genotype.save(self.run.path / "genotype.json")
        lines = ["# agd train", "", f"- {self.step} steps, batch {self.cfg.batch}, crop {self.patch} input pixels",
                 "", "## Where the training step's time goes", ""] + step_lines(self.run, self.run.read_log())
        atomic_write_text(self.run.path / "report.md", "\n".join(lines) + "\n")
