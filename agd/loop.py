"""The step loop of agd's long runs, the search (:class:`agd.search.Search`) and training
(:class:`agd.train.Trainer`): resume, checkpoint, roll back.

- ``--resume`` loads the run folder's checkpoint (:meth:`agd.runs.RunDir.load_state`: safetensors, no code
  run) and drops the log records past it, so a resumed run's log equals an uninterrupted one's.
- A checkpoint is taken before the first step, every ``every`` steps and after the last: written atomically
  to the run folder (:meth:`agd.runs.RunDir.save_state`) by the process that writes it (rank 0 under
  torchrun), and a copy kept in memory.
- A step whose loss is not finite returns ``{"nonfinite": 1.0}`` and is not counted: the loop restores the
  last checkpoint's state, the run lowers its learning rates (:meth:`Steps.rolled_back`) and the loop goes
  on from there; after :data:`MAX_ROLLBACKS` roll-backs a non-finite loss is an AgdError.
- Every other step's record is logged with the step it was computed at (``{"step": n, **record}``), then the
  step advances and :meth:`Steps.after_step` sees the record.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from agd.io import AgdError
from agd.runs import RunDir

MAX_ROLLBACKS = 3


class Stateful(Protocol):
    """A part of a run's state: a module, an optimiser, a scheduler, a controller."""

    def state_dict(self) -> dict[str, Any]:
        """Its state."""

    def load_state_dict(self, state: dict[str, Any]) -> Any:
        """Restore its state."""


def parts_state(parts: Mapping[str, Stateful]) -> dict[str, Any]:
    """Each part's ``state_dict()`` under its name, then torch's RNG state as ``"rng"``."""
    return {**{name: part.state_dict() for name, part in parts.items()}, "rng": torch.get_rng_state()}


def load_parts(parts: Mapping[str, Stateful], state: dict[str, Any]) -> None:
    """Restore what :func:`parts_state` gave (the parts in order, then the RNG)."""
    for name, part in parts.items():
        part.load_state_dict(state[name])
    torch.set_rng_state(state["rng"])


class Steps(Protocol):
    """What a run gives the loop: its step counter, its whole state, and one step at a time."""

    step: int

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs (weights, optimisers, RNG, ...), ``"step"`` included."""

    def load(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state` (the step counter too)."""

    def take_step(self) -> dict[str, Any]:
        """Run step ``self.step``: its record, or ``{"nonfinite": 1.0}`` before anything was updated."""

    def after_step(self, rec: dict[str, Any]) -> None:
        """After the record of a step was logged and the counter advanced (evaluations, progress)."""

    def rolled_back(self, failed: int, reason: str) -> None:
        """After the state of the last checkpoint was restored because step ``failed`` gave ``reason``."""


class CheckpointLoop:
    """Runs ``steps`` to a total number of steps in the run folder ``run``; ``what`` ("search", "train")
    names the run in errors; ``writes``: this process writes the run folder."""

    def __init__(self, steps: Steps, run: RunDir, what: str, *, writes: bool = True) -> None:
        self.steps, self.run, self.what, self.writes = steps, run, what, writes
        self.good: dict[str, Any] | None = None  # the last checkpoint's state
        self.rollbacks = 0

    def resume(self) -> None:
        self.steps.load(self.run.load_state())
        if self.writes:
            self.run.truncate_log(self.steps.step)

    def checkpoint(self) -> None:
        self.good = copy.deepcopy(self.steps.state())
        if self.writes:
            self.run.save_state(self.good)

    def roll_back(self, reason: str) -> None:
        failed = self.steps.step
        if self.good is None or self.rollbacks >= MAX_ROLLBACKS:
            raise AgdError(f"{self.what}: {reason} at step {failed}; rolling back did not help "
                           f"(after {self.rollbacks} tries)")
        self.steps.load(copy.deepcopy(self.good))
        self.rollbacks += 1
        self.steps.rolled_back(failed, reason)

    def run_to(self, total: int, every: int, resume: bool = False) -> None:
        """Step until ``steps.step == total`` (see the module docstring)."""
        if resume:
            self.resume()
        self.checkpoint()
        while self.steps.step < total:
            rec = self.steps.take_step()
            if rec.get("nonfinite"):
                self.roll_back("non-finite loss")
                continue
            rec = {"step": self.steps.step, **rec}
            if self.writes:
                self.run.log(rec)
            self.steps.step += 1
            self.steps.after_step(rec)
            if self.steps.step % every == 0 or self.steps.step == total:
                self.checkpoint()
