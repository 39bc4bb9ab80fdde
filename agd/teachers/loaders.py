"""Loaders for teacher weights: ESRGAN / BasicSR / Real-ESRGAN RRDBNet checkpoints, CycleGAN
(pix2pix and vintagify layouts), ``module:factory`` strings and ``torch.export`` programs.

Every checkpoint is read through :func:`agd.io.load_checkpoint` (weights only or safetensors, code
pickles refused). The architecture is inferred from the keys and shapes and the weights are loaded
strictly; a state dict that does not fit raises an AgdError naming the file and a few of the missing,
unexpected or wrongly shaped keys.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from agd.io import AgdError, load_checkpoint, sha256_file, unwrap_state_dict
from agd.teachers.cyclegan import ResnetGenerator
from agd.teachers.rrdbnet import RRDBNet

# sha256 of well-known teacher files, checked whenever a file of that name is loaded.
KNOWN_SHA256: dict[str, str] = {
    "RRDB_ESRGAN_x4.pth": "65fece06e1ccb48853242aa972bdf00ad07a7dd8938d2dcbdf4221b59f6372ce",
    "RealESRGAN_x4plus.pth": "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
    "horse2zebra_0.4.0.pth": "043afb9bdb059f8423ba772f9b01b5d72dc63f8221989e7750807df6c55d56b4",
}

_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


def name_list(keys: Iterable[str], limit: int = 4) -> str:
    """``a, b, c, d ... and N more`` (sorted), for error messages."""
    keys = sorted(keys)
    head = ", ".join(keys[:limit])
    return head + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of ``path``; AgdError if the file's name is a known teacher file and the hash differs."""
    path = Path(path)
    got = sha256_file(path)
    expected = KNOWN_SHA256.get(path.name)
    if expected is not None and got != expected:
        raise AgdError(f"{path}: sha256 {got} does not match the published {expected} of {path.name} "
                       "(a corrupted or different file under a well-known name)")
    return got


def load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str, desc: str) -> nn.Module:
    """Load ``sd`` into ``model`` strictly; AgdError naming ``what`` and the offending keys otherwise."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {name_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {name_list(unexpected)}")
    if shapes:
        problems.append(f"wrong shapes: {name_list(shapes, 2)}")
    if problems:
        raise AgdError(f"{what}: does not fit {desc}; " + "; ".join(problems))
    model.load_state_dict(dict(sd), strict=True)
    return model


# ----------------------------------------------------------------------------------------- formats

def detect_format(sd: Mapping[str, torch.Tensor], what: str = "state dict") -> str:
    """``esrgan`` (official ESRGAN names), ``basicsr`` (BasicSR / Real-ESRGAN), ``pix2pix``
    (CycleGAN with ``conv_block``) or ``vintagify`` (CycleGAN with ``block``)."""
    keys = list(sd)
    if any(k.startswith(("RRDB_trunk.", "trunk_conv.", "upconv1.", "HRconv.")) for k in keys):
        return "esrgan"
    if any(k.startswith(("conv_body.", "conv_up1.", "conv_hr.")) or re.match(r"body\.\d+\.rdb\d\.", k)
           for k in keys):
        return "basicsr"
    if any(re.match(r"model\.\d+\.sub\.", k) for k in keys):
        raise AgdError(f"{what}: old-architecture ESRGAN keys (model.N.sub.*) are not supported; "
                       "use the official RRDB_ESRGAN_x4.pth layout or a BasicSR/Real-ESRGAN checkpoint")
    if any(re.match(r"model\.\d+\.conv_block\.", k) for k in keys):
        return "pix2pix"
    if any(re.match(r"model\.\d+\.block\.", k) for k in keys):
        return "vintagify"
    if "model.1.weight" in sd:
        return "pix2pix"
    raise AgdError(f"{what}: unknown checkpoint layout (not ESRGAN, BasicSR/Real-ESRGAN or CycleGAN); "
                   f"its keys: {name_list(keys)}")


def esrgan_to_basicsr(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename official ESRGAN keys (``RRDB_trunk.N.RDBk.convj``, ``trunk_conv``, ``upconvK``, ``HRconv``)
    to the BasicSR names; other keys pass unchanged (and will be reported as unexpected)."""
    out = {}
    for k, v in sd.items():
        k2 = re.sub(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", r"body.\1.rdb\2.", k)
        k2 = re.sub(r"^trunk_conv\.", "conv_body.", k2)
        k2 = re.sub(r"^upconv(\d)\.", r"conv_up\1.", k2)
        k2 = re.sub(r"^HRconv\.", "conv_hr.", k2)
        out[k2] = v
    return out


def _need(sd: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise AgdError(f"{what}: missing key {key} (keys present: {name_list(sd)})")
    return sd[key]


def infer_rrdbnet_config(sd: Mapping[str, torch.Tensor], what: str = "state dict",
                         scale: int | None = None) -> dict[str, int]:
    """nf, nb, gc, in/out channels and scale of a BasicSR-named RRDBNet state dict.

    The scale comes from the number of ``conv_upK`` layers (3: x8, 2: x4 body) and, for the x4 body,
    from ``conv_first``'s input channels: ``out_ch * 4`` means pixel-unshuffle 2 (x2), ``out_ch * 16``
    pixel-unshuffle 4 (x1). ``scale`` (when the caller knows it) settles ambiguous cases.
    """
    w_first = _need(sd, "conv_first.weight", what)
    out_ch = int(_need(sd, "conv_last.weight", what).shape[0])
    nf, c_in = int(w_first.shape[0]), int(w_first.shape[1])
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.", k))}
    nb = max(blocks) + 1 if blocks else 0
    gc = int(sd["body.0.rdb1.conv1.weight"].shape[0]) if "body.0.rdb1.conv1.weight" in sd else 32
    n_up = sum(1 for k in sd if re.fullmatch(r"conv_up\d\.weight", k))
    if n_up == 3:
        options = {8: c_in}
    elif n_up == 2:
        options = {4: c_in}
        if c_in % 4 == 0:
            options[2] = c_in // 4
        if c_in % 16 == 0:
            options[1] = c_in // 16
    else:
        raise AgdError(f"{what}: {n_up} conv_up layers; RRDBNet has 2 (x1, x2, x4) or 3 (x8)")
    if scale is not None:
        if scale not in options:
            raise AgdError(f"{what}: cannot be an x{scale} RRDBNet (conv_first takes {c_in} channels, "
                           f"{n_up} upsamplings; possible scales: {sorted(options)})")
        s = scale
    else:
        same = [s for s, c in options.items() if c == out_ch]
        s = same[0] if same else max(options)
    return {"in_ch": options[s], "out_ch": out_ch, "nf": nf, "nb": nb, "gc": gc, "scale": s}


def load_rrdbnet(sd: Mapping[str, torch.Tensor], what: str = "state dict",
                 scale: int | None = None) -> RRDBNet:
    """An RRDBNet holding ``sd`` (official ESRGAN or BasicSR names, already unwrapped)."""
    if detect_format(sd, what) == "esrgan":
        sd = esrgan_to_basicsr(sd)
    cfg = infer_rrdbnet_config(sd, what, scale)
    model = RRDBNet(**cfg)
    desc = "RRDBNet(" + ", ".join(f"{k}={v}" for k, v in cfg.items()) + ")"
    return load_strict(model, sd, what, desc)


def pix2pix_to_block_names(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename pix2pix's ``conv_block`` to ``block`` and drop the running statistics that
    InstanceNorm layers of old (< 0.4) pix2pix checkpoints carry (InstanceNorm keeps none)."""
    out = {}
    for k, v in sd.items():
        if k.rsplit(".", 1)[-1] in _NORM_STATS:
            continue
        out[re.sub(r"^(model\.\d+)\.conv_block\.", r"\1.block.", k)] = v
    return out


def infer_cyclegan_config(sd: Mapping[str, torch.Tensor], what: str = "state dict") -> dict[str, Any]:
    """in/out channels, ngf, n_blocks, n_down, norm_affine and padding of a CycleGAN state dict
    (``block`` names, see :func:`pix2pix_to_block_names`)."""
    w_first = _need(sd, "model.1.weight", what)
    top = sorted((int(m.group(1)), k) for k in sd if (m := re.fullmatch(r"model\.(\d+)\.weight", k))
                 and sd[k].ndim == 4)
    if len(top) < 2 or len(top) % 2:
        raise AgdError(f"{what}: {len(top)} top-level conv layers, a CycleGAN ResNet generator has "
                       "2 + 2 * n_down (keys model.N.weight)")
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"model\.(\d+)\.block\.", k))})
    padding = "reflect"
    if blocks and f"model.{blocks[0]}.block.0.weight" in sd:
        padding = "zero"
    return {"in_ch": int(w_first.shape[1]), "out_ch": int(sd[top[-1][1]].shape[0]),
            "ngf": int(w_first.shape[0]), "n_blocks": len(blocks), "norm_affine": "model.2.weight" in sd,
            "padding": padding, "n_down": (len(top) - 2) // 2}


def load_cyclegan(sd: Mapping[str, torch.Tensor], what: str = "state dict") -> ResnetGenerator:
    """A ResnetGenerator holding ``sd`` (pix2pix or vintagify names, already unwrapped)."""
    sd = pix2pix_to_block_names(sd)
    cfg = infer_cyclegan_config(sd, what)
    desc = "ResnetGenerator(" + ", ".join(f"{k}={v}" for k, v in cfg.items()) + ")"
    return load_strict(ResnetGenerator(**cfg), sd, what, desc)


@dataclass
class LoadedGenerator:
    """A generator read from a checkpoint file: its module (float32, CPU), task, scale, the detected
    format and the file's sha256."""

    module: nn.Module
    task: str
    scale: int
    format: str
    sha256: str


def load_generator_checkpoint(path: str | os.PathLike, scale: int | None = None) -> LoadedGenerator:
    """Read a ``.pth`` / ``.pt`` / ``.safetensors`` generator checkpoint and detect its layout.

    Wrappers (``params_ema`` preferred over ``params``, ``state_dict``, ...) and the ``module.`` prefix
    are removed; a file named like a well-known teacher is checked against its published sha256."""
    path = Path(path)
    digest = file_sha256(path) if path.is_file() else ""
    sd = unwrap_state_dict(load_checkpoint(path), path)
    fmt = detect_format(sd, str(path))
    if fmt in ("esrgan", "basicsr"):
        model = load_rrdbnet(sd, str(path), scale)
        return LoadedGenerator(model, "sr", model.scale, fmt, digest)
    model = load_cyclegan(sd, str(path))
    return LoadedGenerator(model, "translation", 1, fmt, digest)


# ---------------------------------------------------------------------------------- custom modules

def load_factory(spec: str) -> nn.Module:
    """Call the zero-argument factory named by ``"package.module:function"`` and return its module."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise AgdError(f"teacher {spec!r}: expected 'module:factory'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the user's own module beside them imports
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # ImportError, or the module's own code failing at import
        raise AgdError(f"teacher {spec}: cannot import module {mod_name!r} ({type(e).__name__}: "
                       f"{_first_line(e)})") from None
    fn = mod
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise AgdError(f"teacher {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise AgdError(f"teacher {spec!r}: {attr!r} is not callable")
    try:
        model = fn()
    except Exception as e:
        raise AgdError(f"teacher {spec}: the factory raised {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise AgdError(f"teacher {spec!r}: the factory returned a {type(model).__name__}, "
                       "not a torch.nn.Module")
    return model


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def load_exported(path: str | os.PathLike) -> torch.export.ExportedProgram:
    """Read a ``torch.export`` program file (``.pt2``)."""
    path = Path(path)
    if not path.is_file():
        raise AgdError(f"exported program {path}: no such file")
    try:
        with warnings.catch_warnings():  # torch's own deprecation notices on unpickling its tree specs
            warnings.simplefilter("ignore", FutureWarning)
            return torch.export.load(str(path))
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AgdError(f"exported program {path}: cannot be read by torch.export.load ({msg})") from None


def exported_input_dims(ep: torch.export.ExportedProgram) -> tuple | None:
    """The first user input's shape as the program records it: ints for static dimensions, symbols (shown
    as strings) for dynamic ones; None when the program records none."""
    names = set(ep.graph_signature.user_inputs)
    ins = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in names]
    try:
        shape = ins[0].meta["val"].shape
    except (IndexError, KeyError, AttributeError):
        return None
    return tuple(int(d) if isinstance(d, int) else str(d) for d in shape) if len(shape) == 4 else None
