"""Every teacher form through every command: the probe (task, scale, size multiple), the value range, the
teacher's identity in caches, what run folders record for --resume, and each bad input as one line with
exit status 2."""

from __future__ import annotations

import sys

import pytest
import torch
import yaml

from agd.data.cache import TeacherCache
from agd.io import AgdError
from agd.teachers import TeacherSpec, load_teacher, parse_range, resolve_on_resume
from agd.teachers.probe import probe_generator
from cli_helpers import run_cli, smooth_images

FACTORIES = '''
import torch
from torch import nn


class SubPixel(nn.Module):
    def __init__(self, scale):
        super().__init__()
        torch.manual_seed(scale)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3 * scale * scale, 3, padding=1))
        self.up = nn.PixelShuffle(scale)
        self.scale = scale

    def forward(self, x):
        base = nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest")
        return base + 0.1 * self.up(self.body(x))


def sr_x2():
    return SubPixel(2)


def sr_x3():
    return SubPixel(3)


def sr_x4():
    return SubPixel(4)


def sr_x5():
    return SubPixel(5)


class DownUp(nn.Module):
    """A translation network with two stride-2 stages, in [-1, 1] (tanh), as CycleGAN-style generators are."""
    value_range = (-1.0, 1.0)

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(8, 3, 3, stride=2, padding=1, output_padding=1), nn.Tanh())

    def forward(self, x):
        return self.net(x)


def down_up():
    return DownUp()


def plain_translation():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Sigmoid())


def same_weights_other_name():
    return plain_translation()


def wide_not_tall():
    return nn.Upsample(scale_factor=(2, 3))


def one_channel():
    return nn.Conv2d(3, 1, 1)


class NaNs(nn.Module):
    def forward(self, x):
        return x * float("nan")


def nans():
    return NaNs()


def raises():
    raise RuntimeError("no weights in this folder")


def not_a_module():
    return "a string"
'''


@pytest.fixture()
def factories(tmp_path, monkeypatch):
    (tmp_path / "agd_forms_factories.py").write_text(FACTORIES)
    (tmp_path / "agd_forms_broken.py").write_text("import torch\nraise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # the CLI imports a user's module from the working directory
    yield "agd_forms_factories"
    for m in ("agd_forms_factories", "agd_forms_broken"):
        monkeypatch.delitem(sys.modules, m, raising=False)


@pytest.mark.parametrize("name,task,scale", [("sr_x2", "sr", 2), ("sr_x3", "sr", 3), ("sr_x4", "sr", 4),
                                             ("plain_translation", "translation", 1)])
def test_probe_finds_task_and_scale(factories, name, task, scale):
    t = load_teacher(f"{factories}:{name}")
    assert (t.info.task, t.info.scale, t.info.range, t.multiple) == (task, scale, (0.0, 1.0), 1)
    x = torch.rand(1, 3, 13, 17)
    assert t(x).shape == (1, 3, 13 * scale, 17 * scale)
    assert t.spec == TeacherSpec(f"{factories}:{name}", task, scale, (0.0, 1.0))
    assert load_teacher(t.spec).identity == t.identity  # the recorded spec loads the same teacher


def test_size_multiple_and_value_range_attribute(factories):
    t = load_teacher(f"{factories}:down_up")
    assert (t.info.task, t.info.range, t.multiple) == ("translation", (-1.0, 1.0), 4)
    x = torch.rand(1, 3, 30, 42)  # not a multiple of 4: padded, run, cropped back
    y = t(x)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    with torch.no_grad():
        pad = torch.nn.functional.pad(x * 2 - 1, (0, 2, 0, 2), mode="reflect")
        torch.testing.assert_close(y, (t.module(pad)[..., :30, :42] + 1) / 2)
    assert load_teacher(f"{factories}:down_up", value_range=(-1, 1)).identity == t.identity
    with pytest.raises(AgdError, match=r"--teacher-range \[0, 1\] contradicts the module's value_range attribute \[-1, 1\]"):
        load_teacher(f"{factories}:down_up", value_range=(0, 1))


def test_named_and_checkpoint_teachers_check_the_given_range(tmp_path):
    from cli_helpers import save_tiny_teachers

    t = save_tiny_teachers(tmp_path)
    tr = load_teacher(t["translation"])
    assert tr.info.range == (-1.0, 1.0) and load_teacher(t["sr"]).info.range == (0.0, 1.0)
    assert load_teacher(TeacherSpec(t["translation"], "translation", 1, (-1, 1))).identity == tr.identity
    with pytest.raises(AgdError, match=r"contradicts its known value range \[-1, 1\]"):
        load_teacher(t["translation"], value_range=(0, 1))


def test_identity_keeps_factories_apart_in_the_cache(factories, tmp_path):
    """Two factories never share cached outputs: the identity is the import path and a digest of the weights."""
    a = load_teacher(f"{factories}:plain_translation")
    b = load_teacher(f"{factories}:same_weights_other_name")
    assert a.identity.split(":")[-1] == b.identity.split(":")[-1]  # the same weights ...
    assert a.identity != b.identity  # ... under another import path
    signed = load_teacher(f"{factories}:plain_translation", value_range=(-1, 1))
    assert signed.identity != a.identity  # another range is another teacher
    x = torch.rand(3, 16, 16)
    ca, cb = TeacherCache(tmp_path / "c", a.identity), TeacherCache(tmp_path / "c", b.identity)
    ca.run(lambda v: a(v[None])[0], x, img_hash="img")
    assert len(list((tmp_path / "c").iterdir())) == 1
    cb.run(lambda v: b(v[None])[0], x, img_hash="img")
    assert len(list((tmp_path / "c").iterdir())) == 2


def test_exported_programs(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 27, 3, padding=1), torch.nn.PixelShuffle(3)).eval()
    x = torch.rand(1, 3, 16, 16)
    h, w = torch.export.Dim("h", min=2, max=2048), torch.export.Dim("w", min=2, max=2048)
    dyn = tmp_path / "x3.pt2"
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({2: h, 3: w},)), str(dyn))
    t = load_teacher(dyn)
    assert (t.info.task, t.info.scale, t.info.name) == ("sr", 3, "x3")
    static = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(static))
    with pytest.raises(AgdError, match=r"static\.pt2: exported for 1x3x16x16 images only \(static height and width\)"):
        load_teacher(static)
    big = tmp_path / "big.pt2"  # dynamic, but only from 512 pixels up: agd cannot run it on its probe or crops
    hb, wb = torch.export.Dim("hb", min=512, max=4096), torch.export.Dim("wb", min=512, max=4096)
    xb = torch.rand(1, 3, 512, 512)
    torch.export.save(torch.export.export(model, (xb,), dynamic_shapes=({2: hb, 3: wb},)), str(big))
    with pytest.raises(AgdError, match=r"teacher .*big\.pt2: cannot run on a probe input \(1x3x64x64: "):
        load_teacher(big)


def test_probe_messages_name_the_shapes(factories):
    with pytest.raises(AgdError, match=r"maps 1x3x64x64 -> 1x3x128x192, neither the same size"):
        load_teacher(f"{factories}:wide_not_tall")
    with pytest.raises(AgdError, match=r"maps a 1x3x64x64 image to 1x1x64x64"):
        load_teacher(f"{factories}:one_channel")
    with pytest.raises(AgdError, match="produces NaN or inf on a 1x3x64x64 probe input"):
        probe_generator(_NaN(), "nan-net", (0.0, 1.0))


class _NaN(torch.nn.Module):
    def forward(self, x):
        return x * float("nan")


BAD = [
    ("agd_forms_missing_module:make", "cannot import module 'agd_forms_missing_module'"),
    ("agd_forms_broken:make", "cannot import module 'agd_forms_broken' (RuntimeError: boom at import)"),
    ("agd_forms_factories:raises", "the factory raised RuntimeError: no weights in this folder"),
    ("agd_forms_factories:not_a_module", "the factory returned a str, not a torch.nn.Module"),
    ("agd_forms_factories:wide_not_tall", "neither the same size (translation) nor k x k the size"),
    ("agd_forms_factories:nans", "produces NaN or inf"),
]


@pytest.mark.parametrize("spec,message", BAD, ids=[b[0].split(":")[1] for b in BAD])
def test_bad_teachers_get_one_line_and_exit_2(factories, tmp_path, capsys, spec, message):
    imgs = smooth_images(tmp_path / "img", 2, (24, 24))
    for args in (["teachers", "run", spec, imgs, tmp_path / "o"],
                 ["search", "--teacher", spec, "--images", imgs, "--out", tmp_path / "s"]):
        code, _, err = run_cli(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and spec in lines[0] and message in lines[0], err


def test_scale_and_task_that_contradict_the_probe(factories, tmp_path, capsys):
    imgs = smooth_images(tmp_path / "img", 2, (24, 24))
    code, _, err = run_cli(capsys, "teachers", "run", f"{factories}:sr_x2", imgs, tmp_path / "o", "--scale", "4")
    assert code == 2 and "--scale 4 contradicts what it is: scale 2 (it maps 1x3x64x64 -> 1x3x128x128)" in err
    code, _, err = run_cli(capsys, "compress", "--teacher", f"{factories}:sr_x2", "--task", "translation",
                           "--out", tmp_path / "c")
    assert code == 2 and "--task translation contradicts what it is: a sr model" in err
    code, _, err = run_cli(capsys, "search", "--teacher", f"{factories}:sr_x5", "--images", imgs,
                           "--out", tmp_path / "s5")
    assert code == 2 and f"teacher {factories}:sr_x5: no SR search space for x5" in err and "x2, x3, x4" in err, err
    code, _, err = run_cli(capsys, "teachers", "run", f"{factories}:sr_x2", imgs, tmp_path / "o",
                           "--teacher-range", "1,0")
    assert code == 2 and "--teacher-range '1,0': LOW must be below HIGH" in err


def test_parse_range_and_resume_resolution():
    assert parse_range("-1,1") == (-1.0, 1.0) and parse_range(None) is None
    with pytest.raises(AgdError, match="expected two numbers"):
        parse_range("0..1")
    rec = TeacherSpec("m:f", "sr", 3, (0, 1)).to_dict()
    assert resolve_on_resume(None, rec, "run") == TeacherSpec("m:f", "sr", 3, (0.0, 1.0))
    assert resolve_on_resume(TeacherSpec("m:f", scale=3), rec, "run").scale == 3
    with pytest.raises(AgdError, match="was made with teacher m:f"):
        resolve_on_resume(TeacherSpec("m:g"), rec, "run")
    with pytest.raises(AgdError, match="was made with teacher"):
        resolve_on_resume(TeacherSpec(None, task="translation"), rec, "run")


def test_runs_record_the_teacher_and_resume_without_it(factories, tmp_path, capsys):
    """search, train, eval and apply with a factory teacher agd has never seen, at x3: the run folders
    record source, task, scale and range, and --resume needs none of them."""
    imgs = smooth_images(tmp_path / "img", 4, (48, 60))
    spec = f"{factories}:sr_x3"
    s = tmp_path / "s"
    code, _, err = run_cli(capsys, "search", "--teacher", spec, "--images", imgs, "--out", s, "--macs", "0.4G",
                           "--steps", "2", "--pretrain-steps", "1", "--batch", "2")
    assert code == 0, err
    cfg = yaml.safe_load((s / "config.yaml").read_text())
    assert cfg["teacher"]["spec"] == {"source": spec, "task": "sr", "scale": 3, "value_range": [0.0, 1.0]}
    assert cfg["space"] == "sr-x3" and cfg["space_config"]["scale"] == 3
    code, _, err = run_cli(capsys, "search", "--out", s, "--resume")  # no teacher given: the recorded one
    assert code == 0, err
    code, _, err = run_cli(capsys, "search", "--teacher", f"{factories}:sr_x2", "--out", s, "--resume")
    assert code == 2 and "was made with teacher" in err
    g = s / "genotype.json"
    t = tmp_path / "t"
    code, _, err = run_cli(capsys, "train", g, "--teacher", spec, "--images", imgs, "--out", t, "--steps", "3")
    assert code == 0, err
    assert yaml.safe_load((t / "config.yaml").read_text())["teacher"]["spec"]["scale"] == 3
    code, _, err = run_cli(capsys, "train", g, "--images", imgs, "--out", t, "--steps", "3", "--resume")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", g, "--task", "translation", "--images", imgs, "--out", t, "--resume")
    assert code == 2 and "was made with teacher" in err
    code, _, err = run_cli(capsys, "eval", g, "--weights", t / "student.safetensors", "--teacher", spec,
                           "--images", imgs, "--out", tmp_path / "e")
    assert code == 0, err
    code, _, err = run_cli(capsys, "apply", g, imgs, tmp_path / "applied", "--weights", t / "student.safetensors")
    assert code == 0, err
    from agd.data.images import read_image

    assert read_image(tmp_path / "applied" / "img0.png").shape == (3, 144, 180)
    code, _, err = run_cli(capsys, "eval", g, "--weights", t / "student.safetensors", "--teacher",
                           f"{factories}:sr_x2", "--images", imgs, "--out", tmp_path / "e2")
    assert code == 2 and "genotype is a sr x3 network" in err


def test_compress_resumes_without_the_teacher(factories, tmp_path, capsys):
    out = tmp_path / "c"
    common = ["--space", "sr-tiny", "--macs", "0.003G", "--search-steps", "2", "--pretrain-steps", "1",
              "--train-steps", "3", "--out", out]
    code, _, err = run_cli(capsys, "compress", "--teacher", f"{factories}:sr_x4", *common)
    assert code == 0, err
    code, _, err = run_cli(capsys, "compress", "--resume", *common)  # the recorded teacher, not the default
    assert code == 0, err
    import json

    assert json.loads((out / "summary.json").read_text())["teacher"]["name"] == f"{factories}:sr_x4"
    code, _, err = run_cli(capsys, "compress", "--resume", "--teacher", "realesrgan-x4plus", *common)
    assert code == 2 and "was made with teacher" in err
