"""train / eval / compress end to end with tiny teachers (fast), and the real main job where installed."""

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli, save_tiny_teachers

from agd.arch import random_genotype

_run = run_cli


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    t = save_tiny_teachers(tmp_path_factory.mktemp("teachers"))
    return Path(t["sr"]), Path(t["translation"])


# MACs budgets at the tiny spaces' reference inputs, below the tiny teachers' own MACs there (sr: 5.2 M at
# 12x12, translation: 1.79 M at 32x32) and above the spaces' smallest networks (0.42 M, 1.31 M)
BUDGETS = {"sr": "0.003G", "translation": "0.0016G"}


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(f.relative_to(folder)): f.stat().st_mtime_ns for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("task", ["sr", "translation"])
def test_compress_end_to_end(tmp_path, teachers, capsys, task):
    from agd.arch import Genotype
    from agd.search import parse_macs
    from agd.space import SearchSpace

    teacher = teachers[0] if task == "sr" else teachers[1]
    space = "sr-tiny" if task == "sr" else "translation-tiny"
    out = tmp_path / "run"
    if task == "sr":
        code, stdout, err = _run(capsys, "compress", "--teacher", teacher, "--out", out, "--space", space,
                                 "--ratio", "1", "--search-steps", "2", "--pretrain-steps", "1", "--train-steps", "3")
        # --ratio 1 of this teacher is above the tiny space's largest network: refused, by name
        assert code == 2 and "above the largest network" in err
    code, stdout, err = _run(capsys, "compress", "--teacher", teacher, "--out", out, "--space", space,
                             "--macs", BUDGETS[task], "--search-steps", "2", "--pretrain-steps", "1", "--train-steps", "3")
    assert code == 0, err
    for f in ("search/genotype.json", "search/report.md", "search/plots/cost.png", "search/supernet.safetensors",
              "train/student.safetensors", "eval/eval.json", "summary.md", "summary.json"):
        assert (out / f).is_file(), f
    s = json.loads((out / "summary.json").read_text())
    # the budget holds for both tasks: the derived network is within ±5 % of it at the reference input, the
    # summary counts that network at the evaluation input, and there it is cheaper than the teacher
    g = Genotype.load(out / "train/genotype.json")
    sp = SearchSpace(g.config)
    assert abs(sp.genotype_macs(g) / parse_macs(BUDGETS[task]) - 1) <= 0.05
    assert s["student"]["macs"] == sp.genotype_macs(g, tuple(s["input"][2:]))
    assert s["student"]["macs"] < s["teacher"]["macs"]
    ev = json.loads((out / "eval/eval.json").read_text())
    assert len(ev["images"]) >= 4 and all("psnr_to_teacher" in r for r in ev["images"])
    # held out: the evaluation images are the built-in held-out split, which neither search nor training saw
    import yaml

    from agd.data.samples import HELD_OUT

    held = {r["image"] for r in ev["images"]}
    assert held == set(HELD_OUT) == set(s["eval_images"]["names"])
    for step in ("search", "train"):
        seen = set(yaml.safe_load((out / step / "config.yaml").read_text())["image_names"])
        assert seen and not seen & held, step
    base = "bicubic" if task == "sr" else "identity"
    assert all(f"{base}_psnr_to_teacher" in r for r in ev["images"]) and s["baseline"]["name"] == base
    md = (out / "summary.md").read_text()
    assert f"| {base} (no network) |" in md and "held-out images" in md
    assert ("closer to the teacher than" in md) or ("WARNING: the student is" in md and "not worth deploying" in md)
    assert ("psnr" in ev["images"][0]) == (task == "sr")
    assert len(list((out / "eval/images").glob("*.png"))) == len(ev["images"])
    # a finished compress resumes to the same summary without recomputing the search or the training: not a
    # file of theirs is rewritten, and the evaluation of the same student scores the same
    before = {step: _mtimes(out / step) for step in ("search", "train")}
    code, _, err = _run(capsys, "compress", "--teacher", teacher, "--out", out, "--space", space, "--resume",
                        "--macs", BUDGETS[task])
    assert code == 0, err
    assert {step: _mtimes(out / step) for step in ("search", "train")} == before
    again = json.loads((out / "summary.json").read_text())
    assert again["student"] == {**s["student"], "latency_ms": again["student"]["latency_ms"]}


def test_train_resume_and_eval_mismatch(tmp_path, teachers, capsys):
    g = tmp_path / "g.json"
    import random

    from agd.space import SearchSpace, get_config

    random_genotype(SearchSpace(get_config("sr-tiny")), random.Random(0)).save(g)
    code, _, err = _run(capsys, "train", g, "--teacher", teachers[0], "--out", tmp_path / "t", "--steps", "4")
    assert code == 0, err
    code, _, err = _run(capsys, "train", g, "--teacher", teachers[0], "--out", tmp_path / "t", "--steps", "4")
    assert code == 2 and "pass --resume" in err
    code, _, err = _run(capsys, "train", g, "--teacher", teachers[0], "--out", tmp_path / "t", "--steps", "4", "--resume")
    assert code == 0, err
    code, _, err = _run(capsys, "eval", g, "--weights", tmp_path / "t/student.safetensors", "--teacher", teachers[1],
                        "--out", tmp_path / "e")
    assert code == 2 and "genotype is a sr x4 network" in err


def test_the_readme_main_job_resolves_to_its_documented_defaults(monkeypatch, capsys):
    """README set-up command 1 ends in ``.venv/bin/agd compress``: parsed by the real command line, those
    words reach the main job (run_compress_job) with the defaults the README states: the Real-ESRGAN x4plus
    teacher, the built-in sample images, the cpu preset, 1/10 of the teacher's MACs, runs/compress. (The job
    itself runs above on tiny teachers and in tests/test_own_teachers.py on real ones from ../shared/data.)"""
    from agd.commands import pipeline
    from agd.teachers import TeacherSpec, get_teacher_info

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    words = readme.split("# 1. ")[1].splitlines()[1].split("&&")[-1].split()
    assert words[:2] == [".venv/bin/agd", "compress"]
    assert "the Real-ESRGAN x4plus teacher" in readme and "the `cpu` preset" in readme and "1/10 of the teacher" in readme
    seen = {}
    monkeypatch.setattr(pipeline, "run_compress_job", lambda **kw: seen.update(kw) or {})
    code, _, err = run_cli(capsys, *words[1:])
    assert code == 0, err
    assert (seen["teacher_spec"], seen["images"], seen["eval_images"], seen["macs"]) == (None, None, None, None)
    assert (seen["preset"], seen["ratio"], seen["out"], seen["device"], seen["resume"]) == \
        ("cpu", 0.1, Path("runs/compress"), "cpu", False)
    source = TeacherSpec.of(seen["teacher_spec"]).resolved_source  # what the job's load_teacher loads
    info = get_teacher_info(source)
    assert (source, info.task, info.scale) == ("realesrgan-x4plus", "sr", 4)


def test_baselines_at_the_same_budget(tmp_path, teachers, capsys):
    import random

    from agd.jobs.baseline import hand_designed, random_within_budget
    from agd.space import SearchSpace, get_config

    space = SearchSpace(get_config("sr-tiny"))
    g = random_genotype(space, random.Random(3))
    budget = space.genotype_macs(g)
    for s in range(3):
        r = random_within_budget(space, budget, seed=s)
        assert abs(space.genotype_macs(r) / budget - 1) <= 0.05
    assert len({random_within_budget(space, budget, seed=s).to_json() for s in range(3)}) >= 2
    h = hand_designed(space, budget)
    assert all(c.op in ("resblock", "identity") for c, s in zip(h.layers, space.layers) if "resblock" in s.ops)
    # at the full spaces' 1/10-of-teacher budgets the hand-designed network is within 5 % too, and deep
    for name, macs in (("translation", 4.955e9), ("sr-x4", 117.485e9), ("translation", 7e9)):
        sp = SearchSpace(get_config(name))
        hd = hand_designed(sp, macs)
        assert abs(sp.genotype_macs(hd) / macs - 1) <= 0.05, name
        assert sum(c.op == "resblock" for c in hd.layers) >= 4, (name, hd.to_json())
        body = {c.width for c, s in zip(hd.layers, sp.layers) if c.op == "resblock" and len(s.widths) > 1}
        assert len(body) == 1, body  # one width ratio
    gp = g.save(tmp_path / "searched.json")
    from agd.data.images import write_image

    held_out = tmp_path / "held-out"
    for name in ("ho_a", "ho_b"):
        write_image(held_out / f"{name}.png", torch.rand(3, 40, 36))
    code, out, err = _run(capsys, "baseline", gp, "--teacher", teachers[0], "--out", tmp_path / "b", "--seeds", "2",
                          "--train-steps", "2", "--eval-images", held_out)
    assert code == 0, err
    for name in ("searched", "random-1"):  # every network is scored on the held-out folder, not the training images
        assert sorted(p.stem for p in (tmp_path / "b" / name / "eval" / "images").glob("*.png")) == ["ho_a", "ho_b"]
    rows = json.loads((tmp_path / "b/baselines.json").read_text())
    assert [r["name"] for r in rows] == ["searched", "hand-designed", "random-0", "random-1", "bicubic"]
    assert rows[-1]["macs"] == 0 and "bicubic (no network)" in (tmp_path / "b/baselines.md").read_text()
    assert (tmp_path / "b/pareto.png").is_file() and "random mean" in (tmp_path / "b/baselines.md").read_text()


def test_eval_with_the_cpp_backend_matches(tmp_path, teachers, capsys):
    """agd eval --backend cpp (agd's fused C++ blocks) scores like the standard-op student."""
    import random

    from agd.arch.fast import available_backends
    from agd.space import SearchSpace, get_config

    if available_backends().get("cpp"):
        pytest.skip(f"C++ backend unavailable: {available_backends()['cpp']}")
    g = random_genotype(SearchSpace(get_config("sr-tiny")), random.Random(5)).save(tmp_path / "g.json")
    res = {}
    for backend in ("torch", "cpp"):
        code, _, err = _run(capsys, "eval", g, "--teacher", teachers[0], "--out", tmp_path / backend, "--backend", backend,
                            "--max-side", "128")
        assert code == 0, err
        res[backend] = json.loads((tmp_path / backend / "eval.json").read_text())
    assert res["cpp"]["mean"]["psnr_to_teacher"] == pytest.approx(res["torch"]["mean"]["psnr_to_teacher"], abs=0.01)
