"""agd.loop, the checkpoint / resume / roll-back loop of the search and of training, on a counter run."""

from __future__ import annotations

import pytest
import torch

from agd.io import AgdError
from agd.loop import MAX_ROLLBACKS, CheckpointLoop, load_parts, parts_state
from agd.runs import RunDir


class Counter:
    """A run whose weight ``w`` grows by one a step; ``bad`` holds the calls (0-based) that are non-finite."""

    def __init__(self, bad: set[int] = frozenset()) -> None:
        self.step = 0
        self.w = torch.zeros(2)
        self.bad = set(bad)
        self.calls = 0
        self.after: list[dict] = []
        self.rolled: list[tuple[int, str, int]] = []

    def state(self) -> dict:
        return {"step": self.step, "w": self.w}

    def load(self, s: dict) -> None:
        self.step, self.w = int(s["step"]), s["w"].clone()

    def take_step(self) -> dict:
        self.calls += 1
        if self.calls - 1 in self.bad:
            return {"nonfinite": 1.0}
        self.w += 1  # in place: a checkpoint kept in memory must not move with it
        return {"w": float(self.w[0])}

    def after_step(self, rec: dict) -> None:
        self.after.append(dict(rec))

    def rolled_back(self, failed: int, reason: str) -> None:
        self.rolled.append((failed, reason, self.step))


def _loop(tmp_path, steps, resume=False, **kw):
    return CheckpointLoop(steps, RunDir.open(tmp_path / "run", resume=resume), "count", **kw)


def test_steps_logged_and_checkpointed_at_start_every_n_and_end(tmp_path, monkeypatch):
    c = Counter()
    loop = _loop(tmp_path, c)
    saved = []
    real = loop.run.save_state
    monkeypatch.setattr(loop.run, "save_state", lambda s: (saved.append(s["step"]), real(s)))
    loop.run_to(7, every=3)
    assert saved == [0, 3, 6, 7]
    assert loop.run.read_log() == [{"step": i, "w": float(i + 1)} for i in range(7)]
    assert [r["step"] for r in c.after] == list(range(7)) and c.step == 7
    back = loop.run.load_state()
    assert back["step"] == 7 and torch.equal(back["w"], torch.full((2,), 7.0))


def test_nonfinite_step_rolls_back_to_the_last_checkpoint(tmp_path):
    c = Counter(bad={4})  # 5th call: step 4, after the checkpoint at step 3
    loop = _loop(tmp_path, c)
    loop.run_to(6, every=3)
    assert c.rolled == [(4, "non-finite loss", 3)]  # step 4 failed, restored to step 3
    assert loop.rollbacks == 1 and c.step == 6 and torch.equal(c.w, torch.full((2,), 6.0))
    assert [r["step"] for r in loop.run.read_log()] == [0, 1, 2, 3, 3, 4, 5]  # step 3 redone from the checkpoint


def test_rolling_back_gives_up_after_max_rollbacks(tmp_path):
    c = Counter(bad=set(range(1, 100)))
    loop = _loop(tmp_path, c)
    with pytest.raises(AgdError, match=rf"^count: non-finite loss at step 0; rolling back did not help "
                                       rf"\(after {MAX_ROLLBACKS} tries\)$"):
        loop.run_to(5, every=2)
    assert len(c.rolled) == MAX_ROLLBACKS


def test_resume_continues_from_the_checkpoint_and_drops_later_records(tmp_path):
    first = Counter()
    _loop(tmp_path, first).run_to(5, every=2)  # checkpoints 0, 2, 4, 5
    run = RunDir(tmp_path / "run")
    state = run.load_state()
    state["step"], state["w"] = 2, torch.full((2,), 2.0)
    run.save_state(state)  # as if killed after step 3's record, the last checkpoint at step 2
    again = Counter()
    _loop(tmp_path, again, resume=True).run_to(5, every=2, resume=True)
    assert again.calls == 3 and [r["step"] for r in again.after] == [2, 3, 4]
    assert run.read_log() == [{"step": i, "w": float(i + 1)} for i in range(5)]


def test_a_process_that_does_not_write_leaves_the_run_folder_alone(tmp_path):
    c = Counter(bad={1})
    loop = _loop(tmp_path, c, writes=False)
    loop.run_to(3, every=1)
    assert c.step == 3 and c.rolled == [(1, "non-finite loss", 1)]  # rolls back from memory
    assert not loop.run.checkpoint.exists() and loop.run.read_log() == []


def test_parts_state_round_trip():
    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    s = parts_state({"net": lin, "opt": opt})
    assert list(s) == ["net", "opt", "rng"]
    x = torch.rand(1)
    other = torch.nn.Linear(2, 2)
    load_parts({"net": other, "opt": torch.optim.SGD(other.parameters(), lr=0.5)}, s)
    assert torch.equal(other.weight, lin.weight) and torch.equal(torch.rand(1), x)
