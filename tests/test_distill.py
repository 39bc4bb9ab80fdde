"""agd.distill: loss terms against float64 hand loops, VGG layout and loading, teacher feature taps,
DistillLoss (gradients, zero loss, fallback, describe)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from agd.distill import (
    LOSS_PRESETS,
    DistillLoss,
    LossConfig,
    TeacherFeatures,
    VGGFeatures,
    content_distance,
    get_preset,
    gram_matrix,
    load_vgg,
    pixel_l1,
    style_distance,
    total_variation,
    vgg_layer_index,
    vgg_state_shapes,
)
from agd.io import AgdError, sha256_file
from agd.teachers import ResnetGenerator, RRDBNet, Teacher, TeacherInfo

# ---------------------------------------------------------------- terms, float64, odd shapes


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def test_pixel_l1_and_content_match_hand_sums() -> None:
    a, b = _rand(2, 3, 5, 7, seed=1), _rand(2, 3, 5, 7, seed=2)
    flat_a, flat_b = a.flatten().tolist(), b.flatten().tolist()
    n = len(flat_a)
    l1 = sum(abs(x - y) for x, y in zip(flat_a, flat_b)) / n
    mse = sum((x - y) ** 2 for x, y in zip(flat_a, flat_b)) / n
    assert pixel_l1(a, b).item() == pytest.approx(l1, rel=1e-12)
    assert content_distance(a, b, "l1").item() == pytest.approx(l1, rel=1e-12)
    assert content_distance(a, b, "mse").item() == pytest.approx(mse, rel=1e-12)
    with pytest.raises(ValueError):
        content_distance(a, b, "huber")
    with pytest.raises(ValueError):
        pixel_l1(a, b[..., :6])


def _hand_gram(f: torch.Tensor) -> list[list[list[float]]]:
    n, c, h, w = f.shape
    x = f.tolist()
    out = []
    for k in range(n):
        g = [[0.0] * c for _ in range(c)]
        for i in range(c):
            for j in range(c):
                s = 0.0
                for y in range(h):
                    for z in range(w):
                        s += x[k][i][y][z] * x[k][j][y][z]
                g[i][j] = s / (c * h * w)  # Johnson et al.: normalised by C * H * W
        out.append(g)
    return out


def test_gram_matrix_normalised_by_chw() -> None:
    f = _rand(2, 3, 5, 7, seed=3)
    expected = torch.tensor(_hand_gram(f), dtype=torch.float64)
    got = gram_matrix(f)
    assert got.shape == (2, 3, 3)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    # a constant map of ones: every Gram entry is H*W / (C*H*W) = 1 / C
    torch.testing.assert_close(gram_matrix(torch.ones(1, 4, 3, 5, dtype=torch.float64)),
                               torch.full((1, 4, 4), 0.25, dtype=torch.float64))


def test_style_distance_is_mean_squared_gram_difference() -> None:
    a, b = _rand(2, 3, 5, 7, seed=4), _rand(2, 3, 6, 4, seed=5)  # sizes may differ, channels may not
    ga, gb = _hand_gram(a), _hand_gram(b)
    diffs = [(ga[k][i][j] - gb[k][i][j]) ** 2 for k in range(2) for i in range(3) for j in range(3)]
    assert style_distance(a, b).item() == pytest.approx(sum(diffs) / len(diffs), rel=1e-12)
    with pytest.raises(ValueError):
        style_distance(a, _rand(2, 4, 5, 7))


def test_total_variation_hand_loop() -> None:
    x = _rand(2, 3, 5, 7, seed=6)
    v = x.tolist()
    n, c, h, w = x.shape
    dx = sum(abs(v[a][b][i][j + 1] - v[a][b][i][j]) for a in range(n) for b in range(c) for i in range(h)
             for j in range(w - 1)) / (n * c * h * (w - 1))
    dy = sum(abs(v[a][b][i + 1][j] - v[a][b][i][j]) for a in range(n) for b in range(c) for i in range(h - 1)
             for j in range(w)) / (n * c * (h - 1) * w)
    assert total_variation(x).item() == pytest.approx(dx + dy, rel=1e-12)
    assert total_variation(torch.full((1, 3, 4, 5), 0.3, dtype=torch.float64)).item() == 0.0
    with pytest.raises(ValueError):
        total_variation(x[..., :1])


# ---------------------------------------------------------------- config and presets


def test_presets_hold_agd_settings() -> None:
    s, t = get_preset("paper-translation-search"), get_preset("paper-translation-train")
    for cfg in (s, t):
        assert (cfg.extractor, cfg.content, cfg.style, cfg.tv) == ("vgg16", 1.0, 1e5, 0.0)
        assert cfg.content_layers == ("relu2_2",) and cfg.content_criterion == "l1"
        assert cfg.style_layers == ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
    assert (s.pixel, t.pixel) == (0.0, 1e-2)
    sr = get_preset("paper-sr")
    assert (sr.extractor, sr.pixel, sr.content, sr.style, sr.content_layers, sr.content_criterion) == (
        "vgg19", 1e-2, 1.0, 0.0, ("conv5_4",), "l1")
    for name in ("tiny-translation", "tiny-sr"):
        assert LOSS_PRESETS[name].extractor == "teacher"
    with pytest.raises(AgdError, match="known presets"):
        get_preset("nope")


def test_loss_config_validation_and_round_trip() -> None:
    cfg = get_preset("paper-translation-train")
    d = json.loads(json.dumps(cfg.to_dict()))
    assert LossConfig.from_dict(d) == cfg
    bad = [
        dict(pixel=-1.0), dict(style=math.nan, style_layers=("relu1_2",)), dict(extractor="resnet"),
        dict(content=1.0), dict(content=1.0, content_layers=("relu9_9",)),
        dict(content=1.0, content_layers=("conv5_4",)),  # VGG16 has no conv5_4
        dict(extractor="teacher", content=1.0, content_layers=("relu2_2",)), dict(content_criterion="huber"),
        dict(content=1.0, content_layers="relu2_2"),
    ]
    for kw in bad:
        with pytest.raises(AgdError):
            LossConfig(**kw)
    with pytest.raises(AgdError, match="unknown field"):
        LossConfig.from_dict({"pixel": 1.0, "colour": 2})
    mapped = cfg.with_teacher_extractor()
    assert mapped.extractor == "teacher" and mapped.content_layers == ("t2",)
    assert mapped.style_layers == ("t1", "t2", "t3")
    # SR: never a deep teacher trunk at HR resolution as a feature extractor
    assert get_preset("paper-sr").with_teacher_extractor("sr").content_layers == ("t1",)


# ---------------------------------------------------------------- VGG layout and loading

VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG19_CONVS = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


def _expected_shapes(convs: tuple[int, ...], per_block: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    chans = [c for c, n in zip((64, 128, 256, 512, 512), per_block) for _ in range(n)]
    out, cin = {}, 3
    for idx, cout in zip(convs, chans):
        out[f"features.{idx}.weight"] = (cout, cin, 3, 3)
        out[f"features.{idx}.bias"] = (cout,)
        cin = cout
    return out


@pytest.mark.parametrize("arch,convs,blocks", [("vgg16", VGG16_CONVS, (2, 2, 3, 3, 3)),
                                               ("vgg19", VGG19_CONVS, (2, 2, 4, 4, 4))])
def test_vgg_key_layout_matches_torchvision(arch: str, convs: tuple[int, ...], blocks: tuple[int, ...]) -> None:
    expected = _expected_shapes(convs, blocks)
    assert vgg_state_shapes(arch) == expected
    sd = VGGFeatures(arch).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected  # no buffer leaks into the state dict


def test_vgg_layer_indices() -> None:
    assert [vgg_layer_index("vgg16", n) for n in ("relu1_2", "relu2_2", "relu3_3", "relu4_3")] == [3, 8, 15, 22]
    assert vgg_layer_index("vgg19", "conv5_4") == 34
    assert vgg_layer_index("vgg19", "relu5_4") == 35
    with pytest.raises(AgdError):
        vgg_layer_index("vgg16", "conv5_4")


def _torchvision_file(folder: Path, arch: str, seed: int, name: str | None = None) -> Path:
    """A random-weights state dict in torchvision's format: every features key plus classifier keys
    (classifier tensors kept small: the loader ignores them whatever their shape)."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(*s, generator=g) * (0.05 if len(s) == 4 else 0.1) for k, s in vgg_state_shapes(arch).items()}
    for i in (0, 3, 6):
        sd[f"classifier.{i}.weight"] = torch.randn(4, 8, generator=g)
        sd[f"classifier.{i}.bias"] = torch.randn(4, generator=g)
    tmp = folder / f"{arch}-tmp.pth"
    torch.save(sd, tmp)
    if name is None:
        name = f"{arch}-{sha256_file(tmp)[:8]}.pth"  # torchvision naming: first 8 hex digits of the sha256
    path = folder / name
    tmp.rename(path)
    return path


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _torchvision_file(tmp_path_factory.mktemp("vgg16"), "vgg16", seed=16)


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _torchvision_file(tmp_path_factory.mktemp("vgg19"), "vgg19", seed=19)


def test_vgg16_loads_strictly_and_taps_are_right(vgg16_file: Path) -> None:
    sd = torch.load(vgg16_file, weights_only=True)
    full = VGGFeatures("vgg16")
    full.load_state_dict({k: v for k, v in sd.items() if k.startswith("features.")}, strict=True)
    model, rec = load_vgg(vgg16_file, "vgg16", last_layer="relu4_3")
    assert rec.verified == "prefix" and rec.sha256 == hashlib.sha256(vgg16_file.read_bytes()).hexdigest()
    assert len(model.features) == 23 and not model.training
    assert all(not p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 37, 45)
    out = model(x, ("relu1_2", "relu2_2", "relu3_3", "relu4_3"))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "relu1_2": (2, 64, 37, 45), "relu2_2": (2, 128, 18, 22), "relu3_3": (2, 256, 9, 11), "relu4_3": (2, 512, 4, 5)}
    # relu2_2 by hand from the file's tensors (ImageNet normalisation, conv/relu/pool at torchvision indices)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = (x - mean) / std
    for i in (0, 2):
        h = F.relu(F.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))
    torch.testing.assert_close(out["relu1_2"], h)
    h = F.max_pool2d(h, 2)
    for i in (5, 7):
        h = F.relu(F.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))
    torch.testing.assert_close(out["relu2_2"], h)
    short, _ = load_vgg(vgg16_file.parent / vgg16_file.name, "vgg16", last_layer="relu2_2")
    assert sorted(short.state_dict()) == sorted(f"features.{i}.{p}" for i in (0, 2, 5, 7) for p in ("weight", "bias"))
    with pytest.raises(AgdError, match="beyond relu2_2"):
        short(x, ("relu3_3",))


def test_vgg19_conv5_4_is_pre_activation(vgg19_file: Path) -> None:
    model, rec = load_vgg(vgg19_file, "vgg19", last_layer="conv5_4")
    assert len(model.features) == 35
    x = torch.rand(1, 3, 35, 33)
    out = model(x, ("conv5_4",))["conv5_4"]
    assert out.shape == (1, 512, 2, 2)
    assert (out < 0).any()  # before the ReLU (random weights give negative pre-activations)


def test_vgg_file_errors(tmp_path: Path, vgg16_file: Path) -> None:
    with pytest.raises(AgdError, match="vgg16-397923af.pth"):
        load_vgg(tmp_path / "missing.pth", "vgg16")
    with pytest.raises(AgdError, match="vgg16-397923af.pth"):
        load_vgg(tmp_path, "vgg16")  # a folder without torchvision's file
    wrong_prefix = tmp_path / "vgg16-00000000.pth"
    wrong_prefix.write_bytes(vgg16_file.read_bytes())
    with pytest.raises(AgdError, match="sha256"):
        load_vgg(wrong_prefix, "vgg16")
    named = tmp_path / "vgg16-397923af.pth"  # torchvision's name, other bytes: the full sha256 is checked
    named.write_bytes(vgg16_file.read_bytes())
    with pytest.raises(AgdError, match="397923af8e79"):
        load_vgg(tmp_path, "vgg16")
    with pytest.raises(AgdError, match="vgg19"):
        load_vgg(vgg16_file, "vgg19")  # layout check: a VGG16 file is not a VGG19


def test_vgg_layout_errors(tmp_path: Path) -> None:
    sd = {k: torch.zeros(*s) for k, s in vgg_state_shapes("vgg16").items()}
    missing = dict(sd)
    del missing["features.28.bias"]
    torch.save(missing, tmp_path / "a.pth")
    with pytest.raises(AgdError, match="features.28.bias"):
        load_vgg(tmp_path / "a.pth", "vgg16")
    bad = dict(sd, **{"features.0.weight": torch.zeros(64, 3, 5, 5)})
    torch.save(bad, tmp_path / "b.pth")
    with pytest.raises(AgdError, match="features.0.weight"):
        load_vgg(tmp_path / "b.pth", "vgg16")
    torch.save(dict(sd, **{"head.weight": torch.zeros(2)}), tmp_path / "c.pth")
    with pytest.raises(AgdError, match="unexpected keys"):
        load_vgg(tmp_path / "c.pth", "vgg16")
    torch.save(sd, tmp_path / "d.pth")  # a name without a checksum: loaded, its sha256 recorded, not verified
    rec = load_vgg(tmp_path / "d.pth", "vgg16")[1]
    assert rec.verified == "none" and rec.sha256 == sha256_file(tmp_path / "d.pth")


# ---------------------------------------------------------------- teacher features


def _teacher(module: nn.Module, task: str, scale: int) -> Teacher:
    module.eval().requires_grad_(False)
    info = TeacherInfo(name=f"test-{task}", task=task, scale=scale, description="random test net", install="")
    multiple = module.size_multiple if isinstance(module, ResnetGenerator) else 1
    return Teacher(module, info, f"test-{task}:random", multiple)


@pytest.fixture(scope="module")
def sr_teacher() -> Teacher:
    torch.manual_seed(0)
    return _teacher(RRDBNet(nf=8, nb=1, gc=4, scale=4), "sr", 4)


@pytest.fixture(scope="module")
def tr_teacher() -> Teacher:
    torch.manual_seed(1)
    m = ResnetGenerator(ngf=4, n_blocks=1)
    for mod in m.modules():  # CycleGAN-like non-trivial biases
        if isinstance(mod, nn.Conv2d) and mod.bias is not None:
            nn.init.normal_(mod.bias, std=0.1)
    return _teacher(m, "translation", 1)


def test_teacher_features_sr_taps(sr_teacher: Teacher) -> None:
    ext = TeacherFeatures(sr_teacher)
    m = sr_teacher.module
    x = torch.rand(2, 3, 13, 11)
    out = ext(x, ("t1", "t2", "t3"))
    with torch.no_grad():
        feat = m.conv_first(x)
        torch.testing.assert_close(out["t1"], F.leaky_relu(feat, 0.2))
        torch.testing.assert_close(out["t2"], m.body[0].rdb1(feat))
        torch.testing.assert_close(out["t3"], m.body[0](feat))
    assert out["t3"].shape == (2, 8, 13, 11)
    assert set(ext(x, ("t1",))) == {"t1"}
    with pytest.raises(AgdError, match="t1, t2, t3"):
        ext(x, ("relu2_2",))
    # independent copy, frozen, stays in eval mode
    assert all(not p.requires_grad for p in ext.parameters())
    teacher_ptrs = {p.data_ptr() for p in m.parameters()}
    assert not teacher_ptrs & {p.data_ptr() for p in ext.parameters()}
    ext.train()
    assert not ext.training


def test_teacher_features_sr_scale2_unshuffles() -> None:
    torch.manual_seed(2)
    t = _teacher(RRDBNet(nf=8, nb=1, gc=4, scale=2), "sr", 2)
    x = torch.rand(1, 3, 9, 11)
    out = TeacherFeatures(t)(x, ("t1",))["t1"]
    with torch.no_grad():
        ref = F.leaky_relu(t.module.conv_first(F.pixel_unshuffle(F.pad(x, (0, 1, 0, 1), mode="reflect"), 2)), 0.2)
    torch.testing.assert_close(out, ref)


def test_teacher_features_translation_taps(tr_teacher: Teacher) -> None:
    ext = TeacherFeatures(tr_teacher)
    assert ext.layer_names == ("t1", "t2", "t3")
    x = torch.rand(2, 3, 16, 20)
    out = ext(x, ("t1", "t2", "t3"))
    with torch.no_grad():
        y = x * 2 - 1  # the generator sees [-1, 1]
        model = tr_teacher.module.model
        torch.testing.assert_close(out["t1"], model[0:4](y))
        torch.testing.assert_close(out["t2"], model[0:7](y))
        torch.testing.assert_close(out["t3"], model[0:10](y))
    assert [tuple(out[k].shape) for k in ("t1", "t2", "t3")] == [(2, 4, 16, 20), (2, 8, 8, 10), (2, 16, 4, 5)]


def test_teacher_features_unknown_structure() -> None:
    t = _teacher(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1)), "translation", 1)
    with pytest.raises(AgdError, match="VGG weights"):
        TeacherFeatures(t)
    # the loss does without: its perceptual terms off, said in the record; pixel L1 alone distils
    loss = DistillLoss("tiny-translation", teacher=t)
    assert loss.extractor is None and "are unknown to agd" in loss.describe()["fallback"]
    s, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    total, terms = loss(s, y)
    assert set(terms) == {"pixel"} and torch.allclose(total, get_preset("tiny-translation").pixel * (s - y).abs().mean())
    with pytest.raises(AgdError, match="VGG weights"):
        DistillLoss("tiny-translation", teacher=t, allow_fallback=False)


# ---------------------------------------------------------------- DistillLoss


def test_distill_loss_matches_terms_and_zero_at_teacher(tr_teacher: Teacher) -> None:
    loss = DistillLoss("tiny-translation", teacher=tr_teacher).double()
    s, t = torch.rand(2, 3, 16, 12, dtype=torch.float64), torch.rand(2, 3, 16, 12, dtype=torch.float64)
    total, terms = loss(s, t)
    assert set(terms) == {"pixel", "content", "style"}
    ext = loss.extractor
    fs, ft = ext(s, ("t1", "t2", "t3")), ext(t, ("t1", "t2", "t3"))
    cfg = get_preset("tiny-translation")
    expected = (cfg.pixel * (s - t).abs().mean() + cfg.content * (fs["t2"] - ft["t2"]).abs().mean()
                + cfg.style * sum((gram_matrix(fs[k]) - gram_matrix(ft[k])).square().mean()
                                  for k in ("t1", "t2", "t3")))
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=0)
    zero, zterms = loss(t.clone(), t)
    assert zero.item() == 0.0 and all(v.item() == 0.0 for v in zterms.values())


def test_gradients_reach_student_only(sr_teacher: Teacher) -> None:
    cfg = LossConfig(name="all", pixel=1.0, gt_pixel=0.5, content=1.0, style=10.0, tv=0.1,
                     content_layers=("t2", "t3"), style_layers=("t1",), extractor="teacher")
    loss = DistillLoss(cfg, teacher=sr_teacher)
    student = torch.rand(1, 3, 12, 12, requires_grad=True)
    teacher_out = torch.rand(1, 3, 12, 12, requires_grad=True)
    gt = torch.rand(1, 3, 12, 12)
    total, terms = loss(student, teacher_out, gt=gt)
    assert set(terms) == {"pixel", "gt_pixel", "content", "style", "tv"}
    assert terms["gt_pixel"].item() == pytest.approx((student - gt).abs().mean().item())
    assert terms["tv"].item() == pytest.approx(total_variation(student).item())
    total.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher_out.grad is None
    assert all(p.grad is None for p in loss.parameters())
    assert all(p.grad is None for p in sr_teacher.module.parameters())
    with pytest.raises(AgdError, match="ground-truth"):
        loss(student, teacher_out)
    with pytest.raises(ValueError):
        loss(student, teacher_out[..., :11])


def test_fallback_to_teacher_without_vgg(tr_teacher: Teacher) -> None:
    loss = DistillLoss("paper-translation-train", teacher=tr_teacher)
    d = loss.describe()
    json.dumps(d)
    assert d["extractor"] == "teacher" and d["requested_extractor"] == "vgg16"
    assert "vgg16-397923af.pth" in d["fallback"]
    assert d["content_layers"] == ["t2"] and d["style_layers"] == ["t1", "t2", "t3"]
    assert d["weights"] == {"pixel": 1e-2, "gt_pixel": 0.0, "content": 1.0, "style": 1e5, "tv": 0.0}
    assert d["teacher"] == "test-translation:random" and set(d["teacher_taps"]) == {"t1", "t2", "t3"}
    x = torch.rand(1, 3, 8, 8)
    assert loss(x, x)[0].item() == 0.0
    with pytest.raises(AgdError, match="vgg16-397923af.pth"):
        DistillLoss("paper-translation-train")
    with pytest.raises(AgdError, match="vgg16-397923af.pth"):
        DistillLoss("paper-translation-train", teacher=tr_teacher, allow_fallback=False)
    # a translation teacher with one downsampling has taps t1, t2: an explicit t3 is an error, a fallback clamps
    small = _teacher(ResnetGenerator(ngf=4, n_blocks=1, n_down=1), "translation", 1)
    with pytest.raises(AgdError, match="t3"):
        DistillLoss("tiny-translation", teacher=small)
    assert DistillLoss("paper-translation-search", teacher=small).describe()["style_layers"] == ["t1", "t2"]
    with pytest.raises(AgdError, match="needs the teacher"):
        DistillLoss("tiny-sr")


def test_vgg_distill_loss_describe_and_grad(vgg19_file: Path, sr_teacher: Teacher) -> None:
    loss = DistillLoss("paper-sr", vgg_weights=vgg19_file, teacher=sr_teacher)
    d = loss.describe()
    json.dumps(d)
    assert d["extractor"] == "vgg19" and d["fallback"] is None and d["teacher"] is None
    assert d["vgg_weights"] == {"arch": "vgg19", "path": str(vgg19_file), "sha256": sha256_file(vgg19_file),
                                "verified": "prefix"}
    assert d["content_layers"] == ["conv5_4"] and d["content_criterion"] == "l1" and d["style_layers"] == []
    assert len(loss.extractor.features) == 35  # built only up to conv5_4
    s = torch.rand(1, 3, 32, 32, requires_grad=True)
    t = torch.rand(1, 3, 32, 32)
    total, terms = loss(s, t)
    assert set(terms) == {"pixel", "content"}
    assert total.item() == pytest.approx(1e-2 * terms["pixel"].item() + terms["content"].item(), rel=1e-6)
    total.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())
    assert loss(t, t)[0].item() == 0.0
    loss.train()
    assert not loss.extractor.training


def test_pixel_preset_builds_no_extractor() -> None:
    loss = DistillLoss("pixel")
    assert loss.extractor is None and loss.describe()["extractor"] is None
    a, b = torch.rand(1, 3, 5, 5), torch.rand(1, 3, 5, 5)
    total, terms = loss(a, b)
    assert set(terms) == {"pixel"} and total.item() == pytest.approx((a - b).abs().mean().item())
