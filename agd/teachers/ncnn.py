"""Read ncnn ``.param`` / ``.bin`` models and convert ESRGAN-style graphs into :class:`RRDBNet`.

The ``.param`` text: magic ``7767517``; ``layer_count blob_count``; then one line per layer:
``Type name n_in n_out in_blobs... out_blobs... k=v ...``. A value is an int or a float; keys at or
below -23300 hold arrays written ``count,v1,v2,...`` for parameter id ``-23300 - key``.

The ``.bin`` holds the layers' weights in graph order. For a Convolution: the weight blob starts with
a 4-byte tag (``0x01306B47``: float16 follows, ``0``: float32 follows), is padded to 4 bytes, and is
followed by ``num_output`` float32 biases when ``bias_term`` (param 5) is 1. Weights are laid out
(out, in, kh, kw) like PyTorch's.

Only the layer types an RRDBNet graph needs are understood (Input, Convolution, Split, Concat, Eltwise,
BinaryOp, Interp); any other type is refused with an AgdError naming it. The conversion maps the
graph's convolutions in order onto the RRDBNet convs (checking counts, shapes and which convs carry a
LeakyReLU), then runs both the ncnn graph (interpreted here with torch ops) and the RRDBNet on a small
random input and requires the same result, which proves the ordering and wiring.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

from agd.io import AgdError
from agd.teachers.rrdbnet import RRDBNet

MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_FP32 = 0
ParamValue = Union[int, float, list]
SUPPORTED_LAYERS = ("Input", "Convolution", "Split", "Concat", "Eltwise", "BinaryOp", "Interp")


@dataclass
class NcnnLayer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, ParamValue] = field(default_factory=dict)

    def get(self, key: int, default: ParamValue = 0) -> ParamValue:
        return self.params.get(key, default)


@dataclass
class NcnnGraph:
    path: Path
    layers: list[NcnnLayer]
    blob_count: int

    @property
    def convolutions(self) -> list[NcnnLayer]:
        return [layer for layer in self.layers if layer.type == "Convolution"]


@dataclass
class ConvWeights:
    weight: torch.Tensor  # (out, in, k, k) float32
    bias: torch.Tensor | None


def _number(text: str, where: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise AgdError(f"{where}: bad parameter value {text!r}") from None


def parse_param(path: str | os.PathLike) -> NcnnGraph:
    """Parse an ncnn ``.param`` text file into layers with their parameters."""
    path = Path(path)
    if not path.is_file():
        raise AgdError(f"ncnn param {path}: no such file")
    lines = [ln.split() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    if not lines or lines[0] != [str(MAGIC)]:
        raise AgdError(f"ncnn param {path}: does not start with the magic number {MAGIC} "
                       "(not a text .param file)")
    try:
        layer_count, blob_count = (int(v) for v in lines[1])
    except (IndexError, ValueError):
        raise AgdError(f"ncnn param {path}: line 2 must be 'layer_count blob_count'") from None
    layers = []
    for i, tok in enumerate(lines[2:], start=3):
        where = f"ncnn param {path} line {i}"
        try:
            n_in, n_out = int(tok[2]), int(tok[3])
        except (IndexError, ValueError):
            raise AgdError(f"{where}: expected 'Type name n_in n_out blobs... k=v...'") from None
        blobs = tok[4:4 + n_in + n_out]
        if len(blobs) != n_in + n_out:
            raise AgdError(f"{where}: {n_in + n_out} blob names announced, {len(blobs)} present")
        params: dict[int, ParamValue] = {}
        for kv in tok[4 + n_in + n_out:]:
            k, sep, v = kv.partition("=")
            if not sep:
                raise AgdError(f"{where}: bad parameter {kv!r} (expected k=v)")
            key = int(_number(k, where))
            if key <= -23300:
                values = [_number(x, where) for x in v.split(",")]
                if not values or values[0] != len(values) - 1:
                    raise AgdError(f"{where}: array parameter {kv!r} has a wrong count")
                params[-23300 - key] = values[1:]
            else:
                params[key] = _number(v, where)
        layers.append(NcnnLayer(tok[0], tok[1], blobs[:n_in], blobs[n_in:], params))
    if len(layers) != layer_count:
        raise AgdError(f"ncnn param {path}: announces {layer_count} layers, holds {len(layers)}")
    blobs_seen = {b for layer in layers for b in layer.inputs + layer.outputs}
    if len(blobs_seen) != blob_count:
        raise AgdError(f"ncnn param {path}: announces {blob_count} blobs, uses {len(blobs_seen)}")
    return NcnnGraph(path, layers, blob_count)


def check_supported(graph: NcnnGraph) -> None:
    """AgdError naming the first layers whose type (or Convolution options) this reader cannot run."""
    bad = sorted({layer.type for layer in graph.layers if layer.type not in SUPPORTED_LAYERS})
    if bad:
        raise AgdError(f"ncnn param {graph.path}: unsupported layer types {', '.join(bad)} "
                       f"(supported: {', '.join(SUPPORTED_LAYERS)})")
    for layer in graph.convolutions:
        k = layer.get(1)
        opts = {"kernel_h": layer.get(11, k), "dilation": layer.get(2, 1), "dilation_h": layer.get(12, layer.get(2, 1)),
                "stride": layer.get(3, 1), "stride_h": layer.get(13, layer.get(3, 1)),
                "int8": layer.get(8, 0), "act": layer.get(9, 0)}
        pad = layer.get(4, 0)
        pads = (pad, layer.get(14, pad), layer.get(15, pad), layer.get(16, layer.get(14, pad)))
        if (opts["kernel_h"] != k or opts["dilation_h"] != opts["dilation"] or opts["stride_h"] != opts["stride"]
                or opts["int8"] or opts["act"] not in (0, 1, 2) or len(set(pads)) != 1 or pad < 0):
            raise AgdError(f"ncnn param {graph.path}: Convolution {layer.name} uses options this reader does "
                           f"not handle (only square kernels, symmetric padding, float weights, "
                           f"activation none/relu/leaky): {layer.params}")


def read_bin(bin_path: str | os.PathLike, graph: NcnnGraph) -> list[ConvWeights]:
    """The Convolution weights of ``graph`` from its ``.bin`` (float16 or float32 blobs), in graph order."""
    bin_path = Path(bin_path)
    if not bin_path.is_file():
        raise AgdError(f"ncnn bin {bin_path}: no such file (it must lie beside {graph.path.name})")
    check_supported(graph)
    data = bin_path.read_bytes()
    pos = 0
    out = []
    for layer in graph.convolutions:
        n_out, k, size = int(layer.get(0)), int(layer.get(1)), int(layer.get(6))
        if n_out <= 0 or k <= 0 or size % (n_out * k * k):
            raise AgdError(f"ncnn param {graph.path}: Convolution {layer.name}: weight_data_size {size} "
                           f"is not a multiple of num_output {n_out} x kernel {k}x{k}")
        if pos + 4 > len(data):
            raise AgdError(f"ncnn bin {bin_path}: ends before the weights of {layer.name}")
        (tag,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if tag == TAG_FP16:
            nbytes = size * 2
            arr = np.frombuffer(data, dtype="<f2", count=size, offset=pos) if pos + nbytes <= len(data) else None
        elif tag == TAG_FP32:
            nbytes = size * 4
            arr = np.frombuffer(data, dtype="<f4", count=size, offset=pos) if pos + nbytes <= len(data) else None
        else:
            raise AgdError(f"ncnn bin {bin_path}: weights of {layer.name} have storage tag 0x{tag:08X} at byte "
                           f"{pos - 4}; only float16 (0x{TAG_FP16:08X}) and float32 (0) are supported")
        if arr is None:
            raise AgdError(f"ncnn bin {bin_path}: ends inside the weights of {layer.name}")
        pos += (nbytes + 3) // 4 * 4
        weight = torch.from_numpy(arr.astype(np.float32)).reshape(n_out, size // (n_out * k * k), k, k)
        bias = None
        if int(layer.get(5, 0)):
            if pos + 4 * n_out > len(data):
                raise AgdError(f"ncnn bin {bin_path}: ends inside the bias of {layer.name}")
            bias = torch.from_numpy(np.frombuffer(data, dtype="<f4", count=n_out, offset=pos).copy())
            pos += 4 * n_out
        out.append(ConvWeights(weight, bias))
    if pos != len(data):
        raise AgdError(f"ncnn bin {bin_path}: {len(data) - pos} bytes left after the {len(out)} convolutions "
                       f"of {graph.path.name} (the .bin does not belong to this .param)")
    return out


def run_graph(graph: NcnnGraph, weights: list[ConvWeights], x: torch.Tensor) -> torch.Tensor:
    """Interpret ``graph`` with torch ops on ``x`` (N, C, H, W) and return its last layer's output."""
    check_supported(graph)
    blobs: dict[str, torch.Tensor] = {}
    convs = iter(weights)
    last = None
    for layer in graph.layers:
        ins = [blobs[b] for b in layer.inputs]
        t = layer.type
        if t == "Input":
            outs = [x]
        elif t == "Convolution":
            cw = next(convs)
            y = F.conv2d(ins[0], cw.weight, cw.bias, stride=int(layer.get(3, 1)), padding=int(layer.get(4, 0)),
                         dilation=int(layer.get(2, 1)))
            act = layer.get(9, 0)
            if act == 1:
                y = F.relu(y)
            elif act == 2:
                slope = layer.get(10, [0.0])
                y = F.leaky_relu(y, float(slope[0]) if slope else 0.0)
            outs = [y]
        elif t == "Split":
            outs = [ins[0]] * len(layer.outputs)
        elif t == "Concat":
            if layer.get(0, 0) != 0:
                raise AgdError(f"ncnn param {graph.path}: Concat {layer.name} on axis {layer.get(0)}, "
                               "only 0 (channels)")
            outs = [torch.cat(ins, 1)]
        elif t == "Eltwise":
            op, coeffs = layer.get(0, 1), layer.get(1, [])
            if op != 1:
                raise AgdError(f"ncnn param {graph.path}: Eltwise {layer.name} op {op}, only 1 (sum)")
            coeffs = coeffs or [1.0] * len(ins)
            outs = [sum(float(c) * a for c, a in zip(coeffs, ins))]
        elif t == "BinaryOp":
            op = layer.get(0, 0)
            if len(ins) != 2 or op not in (0, 1, 2):
                raise AgdError(f"ncnn param {graph.path}: BinaryOp {layer.name} op {op} with {len(ins)} inputs, "
                               "only add/sub/mul of two blobs")
            outs = [(ins[0] + ins[1], ins[0] - ins[1], ins[0] * ins[1])[int(op)]]
        elif t == "Interp":
            mode, sh, sw = layer.get(0, 0), float(layer.get(1, 1.0)), float(layer.get(2, 1.0))
            if mode != 1 or sh != sw or sh != int(sh):
                raise AgdError(f"ncnn param {graph.path}: Interp {layer.name} type {mode} x{sh},{sw}; "
                               "only nearest (1) with one whole scale")
            outs = [F.interpolate(ins[0], scale_factor=sh, mode="nearest")]
        else:  # pragma: no cover - check_supported refused it
            raise AgdError(f"ncnn param {graph.path}: unsupported layer {t}")
        for name, value in zip(layer.outputs, outs):
            blobs[name] = value
        last = outs[0]
    if last is None:
        raise AgdError(f"ncnn param {graph.path}: holds no layer")
    return last


def _conv_dims(layer: NcnnLayer) -> tuple[int, int, int]:
    n_out, k, size = int(layer.get(0)), int(layer.get(1)), int(layer.get(6))
    return n_out, size // (n_out * k * k), k


def infer_rrdbnet_config(graph: NcnnGraph) -> dict[str, int]:
    """nf, nb, gc, channels and scale of the RRDBNet an ncnn graph encodes: scale 2 ** (number of
    nearest x2 Interp layers), nb from the conv count (1 + 15 nb + 1 + ups + 2)."""
    check_supported(graph)
    convs = graph.convolutions
    n_up = sum(1 for layer in graph.layers if layer.type == "Interp")
    nb, rest = divmod(len(convs) - 4 - n_up, 15)
    if n_up not in (2, 3) or rest or nb < 0 or len(convs) < 4 + n_up:
        raise AgdError(f"ncnn param {graph.path}: {len(convs)} convolutions and {n_up} x2 upsamplings do "
                       "not make an RRDBNet (1 + 15 per block + 1 + upsamplings + 2 convolutions, 2 or 3 "
                       "upsamplings)")
    nf, in_ch, _ = _conv_dims(convs[0])
    gc = _conv_dims(convs[1])[0] if nb else 32
    out_ch = _conv_dims(convs[-1])[0]
    return {"in_ch": in_ch, "out_ch": out_ch, "nf": nf, "nb": nb, "gc": gc, "scale": 2 ** n_up}


def _rrdbnet_convs(model: RRDBNet) -> list[tuple[str, torch.nn.Conv2d, bool]]:
    """(name, conv, followed by LeakyReLU) in forward order."""
    leaky = ("conv1", "conv2", "conv3", "conv4", "conv_up1", "conv_up2", "conv_up3", "conv_hr")
    return [(n, m, n.rsplit(".", 1)[-1] in leaky) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d)]


def load_rrdbnet(param_path: str | os.PathLike, bin_path: str | os.PathLike | None = None,
                 verify: bool = True) -> RRDBNet:
    """Convert an ncnn ESRGAN graph (``.param`` + the ``.bin`` beside it) into an RRDBNet.

    ``verify`` runs the ncnn graph and the RRDBNet on one small random input and requires the same
    output (max difference 1e-4 relative to the output range)."""
    param_path = Path(param_path)
    bin_path = Path(bin_path) if bin_path is not None else param_path.with_suffix(".bin")
    graph = parse_param(param_path)
    cfg = infer_rrdbnet_config(graph)
    weights = read_bin(bin_path, graph)
    model = RRDBNet(**cfg)
    targets = _rrdbnet_convs(model)
    inputs = [layer.name for layer in graph.layers if layer.type == "Input"]
    first = graph.convolutions[0]
    input_blobs = {b for layer in graph.layers if layer.type == "Input" for b in layer.outputs}
    if len(inputs) != 1 or first.inputs[0] not in input_blobs:
        raise AgdError(f"ncnn param {param_path}: the first convolution {first.name} does not read the "
                       "graph's single input")
    for layer, cw, (name, conv, leaky) in zip(graph.convolutions, weights, targets):
        has_leaky = layer.get(9, 0) == 2 and abs(float(layer.get(10, [0.0])[0]) - 0.2) < 1e-6
        if (tuple(cw.weight.shape) != tuple(conv.weight.shape) or cw.bias is None or has_leaky != leaky
                or int(layer.get(4, 0)) != 1 or int(layer.get(3, 1)) != 1 or int(layer.get(2, 1)) != 1):
            raise AgdError(f"ncnn param {param_path}: convolution {layer.name} ({tuple(cw.weight.shape)}, "
                           f"leaky {has_leaky}) does not match RRDBNet's {name} ({tuple(conv.weight.shape)}, "
                           f"leaky {leaky}, 3x3 pad 1 with bias)")
        with torch.no_grad():
            conv.weight.copy_(cw.weight)
            conv.bias.copy_(cw.bias)
    if verify:
        g = torch.Generator().manual_seed(0)
        side = 12 if cfg["scale"] >= 4 else 8
        x = torch.rand(1, cfg["in_ch"], side, side, generator=g)
        with torch.no_grad():
            want = run_graph(graph, weights, x)
            got = model.eval()(x)
        if want.shape != got.shape or (want - got).abs().max() > 1e-4 * max(1.0, float(want.abs().max())):
            raise AgdError(f"ncnn param {param_path}: the graph's wiring is not an RRDBNet's (same convolutions, "
                           "different result on a test input)")
    return model
