"""The command line end to end: teachers list/run and the demo (main job), with tiny checkpoints so the
tests are fast, and with the real teachers where they are installed."""

import json
import subprocess
import sys

import pytest
import torch
from cli_helpers import random_images as _images

from agd.cli import main
from agd.data.images import read_image
from agd.io import save_checkpoint
from agd.teachers import ResnetGenerator, RRDBNet, list_teachers


def _run(capsys, *args) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tiny_teachers(tmp_path):
    torch.manual_seed(0)
    sr = RRDBNet(nf=8, nb=1, gc=4, scale=4)
    tr = ResnetGenerator(ngf=4, n_blocks=1, norm_affine=True)
    sr_path, tr_path = tmp_path / "tiny_sr.pth", tmp_path / "tiny_tr.pth"
    save_checkpoint({"params_ema": sr.state_dict()}, sr_path)  # BasicSR layout
    save_checkpoint(tr.state_dict(), tr_path)  # vintagify layout (affine InstanceNorm, `block`)
    return sr_path, tr_path


def test_teachers_run_tiled_on_a_folder(tmp_path, tiny_teachers, capsys):
    sr_path, tr_path = tiny_teachers
    inp = _images(tmp_path / "in", [(37, 23), (20, 41)])
    code, out, err = _run(capsys, "teachers", "run", str(sr_path), str(inp), str(tmp_path / "out"),
                          "--tile", "16", "--overlap", "4")
    assert code == 0, err
    assert read_image(tmp_path / "out/im0.png").shape == (3, 148, 92)
    assert read_image(tmp_path / "out/im1.png").shape == (3, 80, 164)
    code, out, err = _run(capsys, "teachers", "run", str(tr_path), str(inp), str(tmp_path / "out_tr"), "--tile", "16")
    assert code == 0, err
    assert read_image(tmp_path / "out_tr/im0.png").shape == (3, 37, 23)
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_teachers_run_user_errors(tmp_path, tiny_teachers, capsys):
    sr_path, _ = tiny_teachers
    code, _, err = _run(capsys, "teachers", "run", str(sr_path), str(tmp_path / "missing"), str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and "missing" in err
    inp = _images(tmp_path / "in", [(8, 8)])
    code, _, err = _run(capsys, "teachers", "run", str(sr_path), str(inp), str(inp))
    assert code == 2 and "must differ" in err


def test_teachers_list_json(capsys):
    code, out, err = _run(capsys, "teachers", "list", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert {"realesrgan-x4plus", "vintage"} <= set(rows)
    assert rows["realesrgan-x4plus"]["params"] == 16_697_987
    assert rows["realesrgan-x4plus"]["gmacs"] == pytest.approx(1174.85, rel=1e-3)
    assert rows["vintage"]["params"] == 11_388_675 and rows["vintage"]["gmacs"] == pytest.approx(49.55, abs=0.01)
    for r in rows.values():
        assert r["installed"] or r["install"].startswith("pip install")
    code, out, _ = _run(capsys, "teachers", "list")
    assert code == 0 and "realesrgan-x4plus" in out


def test_info_human(capsys):
    code, out, err = _run(capsys, "info")
    assert code == 0, err
    for name in ("torch", "triton kernels", "C++ CPU ops", "CUDA ops", "TVM arm64"):
        assert name in out


def test_bench_kernels_bad_options_are_named(capsys):
    code, _, err = _run(capsys, "bench", "kernels", "--dtypes", "float32,fp8")
    assert code != 0 and "--dtypes 'float32,fp8': unknown 'fp8'" in err
    code, _, err = _run(capsys, "bench", "kernels", "--suite", "cudnn")
    assert code != 0 and "--suite 'cudnn'" in err


def test_demo_with_custom_teachers(tmp_path, tiny_teachers, capsys):
    sr_path, tr_path = tiny_teachers
    out_dir = tmp_path / "demo"
    code, out, err = _run(capsys, "demo", "--out", str(out_dir), "--max-side", "48",
                          "--sr-teacher", str(sr_path), "--translation-teacher", str(tr_path))
    assert code == 0, err
    summary = json.loads((out_dir / "summary.json").read_text())
    assert len(summary["images"]) >= 4
    for row in summary["images"]:
        assert row["bicubic_psnr_y"] > 15 and 0 < row["sr_gmacs"]
    assert (out_dir / "summary.md").read_text().startswith("# agd demo")
    assert len(list(out_dir.glob("*.png"))) == 5 * len(summary["images"])
    # a translation teacher where an SR one is expected is refused by name
    code, _, err = _run(capsys, "demo", "--out", str(out_dir), "--sr-teacher", str(tr_path))
    assert code == 2 and "--sr-teacher" in err


def test_demo_with_real_teachers(tmp_path):
    """The README's main job, on the real teachers (subprocess, as a user runs it), at a small size."""
    missing = [t.name for t in list_teachers() if not t.is_installed()]
    if missing:
        pytest.skip(f"teacher packages not installed: {', '.join(missing)} (see requirements-teachers.txt)")
    out_dir = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "agd", "demo", "--out", str(out_dir), "--max-side", "96"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    s = json.loads((out_dir / "summary.json").read_text())
    # the GAN teacher beats nothing in PSNR by design, but it must be a sane upscaler: within a few dB
    # of bicubic, and the translation must change the image
    for row in s["images"]:
        assert row["sr_psnr_y"] > row["bicubic_psnr_y"] - 4
        assert row["translation_mean_abs_change"] > 0.02
    assert {t["name"] for t in s["teachers"]} == {"realesrgan-x4plus", "vintage"}


def test_task_defaults_is_one_consistent_table():
    """The per-task defaults (agd.space.config.TASK_DEFAULTS) name spaces of their own task and scale and
    teachers of their own task; the task names resolve to a task's first row, and the search's default
    space for an SR scale is its row's."""
    from agd.space import PRESETS, TASK_DEFAULTS, get_config, sr_space_for_scale, task_default
    from agd.teachers import get_teacher_info

    for d in TASK_DEFAULTS:
        cfg = PRESETS[d.space]
        assert (cfg.kind, cfg.scale) == (d.task, d.scale), d
        assert get_teacher_info(d.teacher).task == d.task, d
        if d.task == "sr":
            assert sr_space_for_scale(d.scale) == d.space
    assert get_config("sr") == PRESETS["sr-x4"] == PRESETS[task_default("sr").space]
    assert get_config("translation") == PRESETS[task_default("translation").space]
