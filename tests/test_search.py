"""The search engine: budgets, derivation, resume after kill -9, data parallelism, bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import save_tiny_teachers, smooth_images
from latency_tables import synthetic_table

from agd.arch import macs_extremes
from agd.io import AgdError
from agd.runs import RunDir
from agd.search import Search, derive_within_budget, get_search_config, macs_budget, parse_macs
from agd.search import data as D
from agd.search.budget import DualController
from agd.search.supernet import Supernet
from agd.space import SearchSpace, get_config
from agd.teachers import load_teacher

REPO = Path(__file__).resolve().parents[1]


_images = smooth_images


@pytest.fixture(scope="module")
def tiny_teachers(tmp_path_factory):
    return save_tiny_teachers(tmp_path_factory.mktemp("teachers"))


def l1(student, target, gt=None):
    return (student - target).abs().mean(), {}


def _search(teacher, images, out, *, space, budget_frac, steps=2, pretrain=1, loss=l1, cfg_over=None):
    cfg = get_search_config("tiny", space=space, pretrain_steps=pretrain, search_steps=steps, eval_every=2,
                            checkpoint_every=1, batch=1, **(cfg_over or {}))
    items = D.prepare(D.load_images(images), teacher, cache_dir=out.parent / "cache", max_side=cfg.max_side, device="cpu")
    sp = SearchSpace(get_config(space))
    (_, _), (mx, _) = macs_extremes(sp)
    budget = macs_budget(sp, macs=mx * budget_frac)
    return Search(cfg, teacher, items, budget, loss, RunDir.open(out, resume=False)), budget


@pytest.mark.parametrize("task,space,fracs", [("translation", "translation", (8, 16, 32)), ("sr", "sr-x4", (8, 16, 32))])
def test_budgets_are_met_within_5_percent(tmp_path, tiny_teachers, task, space, fracs):
    """Acceptance: budgets of 1/8, 1/16, 1/32 of the largest network give derived networks within ±5 %."""
    teacher = load_teacher(tiny_teachers[task])
    images = _images(tmp_path / "img")
    for frac in fracs:
        search, budget = _search(teacher, images, tmp_path / f"run{frac}", space=space, budget_frac=1 / frac)
        result = search.run_loop()
        assert abs(result.cost / budget.value - 1) <= 0.05, (frac, result.cost / budget.value)
        assert search.space.genotype_macs(result.genotype) == pytest.approx(result.cost)
        assert any("op_probs" in h for h in result.history)


def test_budget_outside_the_space_is_refused():
    sp = SearchSpace(get_config("sr-x4"))
    (mn, _), (mx, _) = macs_extremes(sp)
    with pytest.raises(AgdError, match="below the smallest network of the sr space"):
        macs_budget(sp, macs=mn * 0.9)
    with pytest.raises(AgdError, match="above the largest network"):
        macs_budget(sp, macs="1T")
    with pytest.raises(AgdError, match="exactly one"):
        macs_budget(sp)
    assert macs_budget(sp, ratio=0.1, teacher_macs=1174.85e9).value == pytest.approx(117.485e9)
    assert parse_macs("12G") == 12e9 and parse_macs("800M") == 8e8 and parse_macs("1.5e9") == 1.5e9
    with pytest.raises(AgdError, match="--macs"):
        parse_macs("twelve")


def test_derivation_is_most_probable_within_budget():
    sp = SearchSpace(get_config("translation-tiny"))
    sn = Supernet(sp)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in sn.arch_parameters():
            p.normal_(0, 2)
    tables = sp.macs_tables()
    (mn, _), (mx, _) = macs_extremes(sp)
    budget = (mn + mx) / 2
    g = derive_within_budget(sp, [m.op_probs() for m in sn.mixed_layers], [m.width_probs() for m in sn.mixed_layers],
                             tables, budget, tol=0.05)
    cost = sp.genotype_macs(g)
    assert abs(cost / budget - 1) <= 0.05

    def logp(gen):
        total = 0.0
        for m, ch in zip(sn.mixed_layers, gen.layers):
            total += math.log(m.op_probs()[m.spec.ops.index(ch.op)]) + math.log(m.width_probs()[m.widths.index(ch.width)])
        return total

    # no architecture within the band is more probable (exhaustive on the tiny space)
    import itertools

    from agd.arch import Genotype, LayerChoice
    from agd.space import op_valid

    best = -math.inf
    for combo in itertools.product(*[[(o, w) for o in s.ops for w in s.widths] for s in sp.layers]):
        c_in, ok = 3, True
        for spec, (o, w) in zip(sp.layers, combo):
            ok = ok and op_valid(o, spec, c_in, w)
            c_in = w
        if not ok:
            continue
        gg = Genotype(sp.config, [LayerChoice(s.name, o, w) for s, (o, w) in zip(sp.layers, combo)])
        if abs(sp.genotype_macs(gg) / budget - 1) <= 0.05:
            best = max(best, logp(gg))
    assert logp(g) == pytest.approx(best, abs=1e-9)


def test_the_controller_steers_a_search_to_a_binding_budget(tmp_path, tiny_teachers):
    """A budget at 1/5 of the largest network binds (the uniform supernet's expected MACs are well above it):
    after every architecture step λ follows dual ascent on log(E / B) (E: that step's expected MACs), so it
    rises while the supernet is over budget, and the architecture steps drive the expected MACs down to the
    budget: the distillation loss alone would not (same run with the controller's step at 0)."""
    teacher = load_teacher(tiny_teachers["sr"])
    images = _images(tmp_path / "img")
    runs = {}
    for dual_step in (2.0, 0.0):
        search, budget = _search(teacher, images, tmp_path / f"run{dual_step}", space="sr-tiny", budget_frac=0.2,
                                 steps=6, cfg_over={"dual_step": dual_step, "arch_lr": 0.05})
        e0 = float(search.model.supernet.expected_cost(search.tables)[0].detach())
        recs = []
        search.progress = recs.append
        search.run_loop()
        runs[dual_step] = (e0, [r for r in recs if r.get("phase") == "search"], budget.value)
    e0, recs, b = runs[2.0]
    assert e0 > 1.5 * b  # binding
    lam = 0.0
    for r in recs:  # the controller's update, step by step
        lam = min(max(lam + 2.0 * math.log(r["expected"] / b), 0.0), 100.0)
        assert r["lam"] == pytest.approx(lam, rel=1e-9, abs=1e-12)
    assert recs[0]["lam"] > 0 and recs[1]["lam"] > recs[0]["lam"]  # over budget: λ rises
    final = recs[-1]["eval"]["expected"]
    assert abs(math.log(final / b)) < 0.5 * abs(math.log(e0 / b))  # moved most of the way to the budget
    assert recs[-1]["eval"]["argmax_cost"] < e0
    e0_free, recs_free, _ = runs[0.0]
    assert all(r["lam"] == 0.0 for r in recs_free)
    assert recs_free[-1]["eval"]["expected"] > final  # without the controller the cost stays higher


def test_dual_controller_moves_toward_the_budget():
    c = DualController(budget=10.0, step=0.5)
    assert c.update(40.0) > 0 and c.penalty(torch.tensor(40.0)) > 0
    lam = c.lam
    for _ in range(50):
        c.update(5.0)
    assert c.lam == 0.0 < lam


def test_nonfinite_loss_rolls_back_and_says_so(tmp_path, tiny_teachers):
    calls = {"n": 0}

    def flaky(student, target, gt=None):
        calls["n"] += 1
        loss = (student - target).abs().mean()
        return (loss * float("nan") if calls["n"] == 6 else loss), {}

    teacher = load_teacher(tiny_teachers["sr"])
    search, _ = _search(teacher, _images(tmp_path / "img"), tmp_path / "run", space="sr-tiny", budget_frac=0.9,
                        steps=3, pretrain=1, loss=flaky)
    events = []
    search.progress = lambda rec: events.append(rec.get("event"))
    result = search.run_loop()
    msgs = [e for e in events if e]
    assert msgs and "non-finite loss" in msgs[0] and "halved the learning rates" in msgs[0]
    assert search.lr_scale == 0.5 and result.genotype is not None


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    import agd.runs

    run = RunDir.open(tmp_path / "run", resume=False)
    run.save_state({"step": 1, "x": torch.ones(2)})

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(agd.runs, "save_checkpoint", full)
    with pytest.raises(AgdError, match="No space left on device.*previous checkpoint is intact"):
        run.save_state({"step": 2, "x": torch.zeros(2)})
    assert run.load_state()["step"] == 1


def test_bad_inputs(tmp_path, tiny_teachers):
    teacher = load_teacher(tiny_teachers["sr"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(AgdError, match="holds no image"):
        D.load_images(tmp_path / "empty")
    bad = _images(tmp_path / "bad", n=2)
    (bad / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(AgdError, match="broken.png: cannot be decoded"):
        D.load_images(bad)
    small = _images(tmp_path / "small", n=3, hw=(32, 40))
    with pytest.raises(AgdError, match="smaller than the 16x16 training crop"):
        _search(teacher, small, tmp_path / "r1", space="sr-x4", budget_frac=0.5)
    with pytest.raises(AgdError, match="the translation space is for translation, the teacher"):
        _search(teacher, _images(tmp_path / "ok"), tmp_path / "r2", space="translation", budget_frac=0.5)
    with pytest.raises(AgdError, match="upscales x2, the teacher .* x4"):
        _search(teacher, _images(tmp_path / "ok"), tmp_path / "r3", space="sr-x2", budget_frac=0.5)
    two = _images(tmp_path / "two", n=2)
    with pytest.raises(AgdError, match="at least 3 images .*weight steps, the architecture steps and the selection"):
        _search(teacher, two, tmp_path / "r4", space="sr-x4", budget_frac=0.5)
    RunDir.open(tmp_path / "r5", resume=False).save_state({"step": 0})
    with pytest.raises(AgdError, match="holds a run already; pass --resume"):
        RunDir.open(tmp_path / "r5", resume=False)
    with pytest.raises(AgdError, match="nothing to resume"):
        RunDir.open(tmp_path / "r6", resume=True)


def _agd_search(out, teacher, images, *extra, env=None, launcher=None):
    cmd = (launcher or [sys.executable, "-m", "agd"]) + [
        "search", "--teacher", teacher, "--images", str(images), "--out", str(out), "--space", "sr-tiny",
        "--macs", "0.003G", *extra]
    return cmd


def test_resume_after_kill_equals_uninterrupted(tmp_path, tiny_teachers):
    """Acceptance: kill -9 a tiny search mid-way, resume: final α, weights and genotype equal an
    uninterrupted run with the same seed (max abs diff <= 1e-6)."""
    from safetensors.torch import load_file

    images = _images(tmp_path / "img")
    args = ("--steps", "10", "--pretrain-steps", "4")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_agd_search(tmp_path / "ref", tiny_teachers["sr"], images, *args), env=env,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(_agd_search(out, tiny_teachers["sr"], images, *args), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline:
        log = out / "metrics.jsonl"
        if log.is_file() and len(log.read_text().splitlines()) >= 7:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "genotype.json").exists(), "the run finished before it was killed"
    res = subprocess.run(_agd_search(out, tiny_teachers["sr"], images, *args, "--resume"), env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    a, b = load_file(str(tmp_path / "ref/supernet.safetensors")), load_file(str(out / "supernet.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6
    assert json.loads((tmp_path / "ref/genotype.json").read_text()) == json.loads((out / "genotype.json").read_text())
    log_ref = [json.loads(x)["step"] for x in (tmp_path / "ref/metrics.jsonl").read_text().splitlines()]
    log_res = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert log_ref == log_res


def test_two_processes_equal_one_with_the_global_batch(tmp_path, tiny_teachers):
    """Acceptance: torchrun with 2 processes (gloo, CPU) and the global batch of 1 process give the same
    α and weights after 20 steps (<= 1e-5)."""
    from safetensors.torch import load_file

    images = _images(tmp_path / "img")
    args = ("--steps", "16", "--pretrain-steps", "4", "--batch", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(_agd_search(tmp_path / "one", tiny_teachers["sr"], images, *args), env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
                "-m", "agd"]
    two = subprocess.run(_agd_search(tmp_path / "two", tiny_teachers["sr"], images, *args, launcher=launcher),
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(str(tmp_path / "one/supernet.safetensors")), load_file(str(tmp_path / "two/supernet.safetensors"))
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-5, worst
    alphas = [k for k in a if k.endswith(("alpha", "beta"))]
    assert alphas and all(torch.allclose(a[k], b[k], atol=1e-5) for k in alphas)


_synthetic_table = synthetic_table


def test_latency_budget_input_size(tmp_path):
    """The budget is for the input size the table was built at: its one size by default (an SR table is
    usually built at the deployment tile, not the reference size), --latency-size among several, and a
    clear error for a size the table lacks."""
    from agd.search.budget import cost_extremes, latency_budget

    space = SearchSpace(get_config("sr-tiny"))
    assert space.config.reference_size == (12, 12)
    one = _synthetic_table(space, [(16, 20)])
    assert one.sizes(space) == [(16, 20)]
    assert one.sizes(SearchSpace(get_config("sr-x4"))) == []  # another space's sizes are not this one's
    path = one.save(tmp_path / "one.json")
    lo, hi = cost_extremes(space, one.tables(space, (16, 20)))
    budget, tables = latency_budget(space, f"{0.25 + (lo + hi) / 2}ms", path, "x86")
    assert budget.size == (16, 20) and budget.overhead == 0.25
    assert torch.equal(tables[0], one.tables(space, (16, 20))[0])
    with pytest.raises(AgdError, match=r"configurations of this space at 12x12 are not measured"):
        latency_budget(space, "1ms", path, "x86", hw=(12, 12))

    two = _synthetic_table(space, [(16, 20), (24, 24)])
    assert two.sizes(space) == [(16, 20), (24, 24)]
    path = two.save(tmp_path / "two.json")
    with pytest.raises(AgdError, match=r"two.json: covers the sr space at 16x20, 24x24; choose the input size "
                                       r"with --latency-size"):
        latency_budget(space, "1ms", path, "x86")
    lo24, hi24 = cost_extremes(space, two.tables(space, (24, 24)))
    assert lo24 > lo  # more pixels, more milliseconds
    budget, _ = latency_budget(space, f"{0.25 + (lo24 + hi24) / 2}ms", path, "x86", hw=(24, 24))
    assert budget.size == (24, 24)
    with_ref = _synthetic_table(space, [None, (24, 24)])  # the reference size among several is the default
    lo12, hi12 = cost_extremes(space, with_ref.tables(space))
    budget, _ = latency_budget(space, f"{0.25 + (lo12 + hi12) / 2}ms", with_ref.save(tmp_path / "ref.json"), "x86")
    assert budget.size == (12, 12)


def test_latency_budget_from_a_table(tmp_path, tiny_teachers, capsys):
    """--latency with a latency table: the derived network's predicted latency is within ±5 % of it.
    The table here is synthetic (a per-configuration cost with a fixed per-call part, plus an overhead);
    measured tables come from `agd latency-table build` (tests/test_tuning.py)."""
    from agd.cli import main
    from agd.search.budget import cost_extremes

    space = SearchSpace(get_config("sr-tiny"))
    table = _synthetic_table(space, [None])
    path = table.save(tmp_path / "x86.json")
    lo, hi = cost_extremes(space, table.tables(space))
    budget = 0.25 + (lo + hi) / 2
    out = tmp_path / "run"
    images = _images(tmp_path / "img")
    args = ["search", "--teacher", tiny_teachers["sr"], "--images", str(images), "--out", str(out), "--space", "sr-tiny",
            "--latency", f"{budget}ms", "--latency-table", str(path), "--target", "x86", "--steps", "2",
            "--pretrain-steps", "1"]
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr().err
    from agd.arch import Genotype

    g = Genotype.load(out / "genotype.json")
    assert abs(table.predict(g) / budget - 1) <= 0.05
    assert RunDir(out).read_config()["budget"]["size"] == [12, 12]  # what --resume reads back
    with pytest.raises(SystemExit):
        main(args[:-6] + ["--target", "arm64", "--out", str(tmp_path / "r2")])
    assert "measured for target 'x86', not 'arm64'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(args + ["--latency-size", "12", "--out", str(tmp_path / "r3")])
    assert "--latency-size '12': expected HxW" in capsys.readouterr().err
