"""VGG16 / VGG19 feature extractors in torchvision's ``features`` layout, loaded from a file the user gives.

Conventions:
- input: RGB images in [0, 1], (N, 3, H, W); they are normalised with the ImageNet mean
  (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), the statistics torchvision's VGGs were trained with;
- ``features`` is an ``nn.Sequential`` whose indices equal torchvision's ``vgg16().features`` /
  ``vgg19().features`` (conv 3x3 pad 1, ReLU, max-pool 2x2), so the file's ``features.N.weight`` /
  ``features.N.bias`` load as they are; ``classifier.*`` keys of the file are ignored;
- layer names: ``convB_I`` (pre-activation), ``reluB_I`` and ``poolB`` for block B (1-5) and conv I of the
  block, e.g. VGG16 ``relu1_2`` = index 3, ``relu2_2`` = 8, ``relu3_3`` = 15, ``relu4_3`` = 22; VGG19
  ``conv5_4`` = 34 (the pre-activation layer ESRGAN and AGD's SR code use);
- the module is frozen: eval mode, ``requires_grad`` off; it may be built only up to the deepest layer a
  loss needs (``last_layer``), and ``forward`` stops at the deepest requested layer.

The weights are never downloaded. torchvision names its files ``<arch>-<first 8 hex digits of the sha256>.pth``
(``vgg16-397923af.pth``, ``vgg19-dcbb9e9d.pth``); the full sha256 of those two files is known and checked,
a file whose name carries another 8-hex suffix is checked against that prefix, and the full sha256 of the
file actually used is always recorded.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from agd.io import AgdError, load_checkpoint, sha256_file, unwrap_state_dict, verify_sha256

VGG_ARCHS = ("vgg16", "vgg19")
#: convolutions per block (blocks of 64, 128, 256, 512, 512 channels), torchvision cfg "D" and "E"
VGG_BLOCKS: dict[str, tuple[int, ...]] = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
VGG_CHANNELS = (64, 128, 256, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VGGFile:
    """torchvision's file for an architecture: name, full sha256, size in bytes."""

    name: str
    sha256: str
    size: int


#: torchvision's ImageNet weights (download.pytorch.org/models/<name>); sha256 of the whole file
VGG_FILES: dict[str, VGGFile] = {
    "vgg16": VGGFile("vgg16-397923af.pth", "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
                     553_433_881),
    "vgg19": VGGFile("vgg19-dcbb9e9d.pth", "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44",
                     574_673_361),
}


def _check_arch(arch: str) -> None:
    if arch not in VGG_ARCHS:
        raise AgdError(f"VGG architecture {arch!r}: unknown; choose from {', '.join(VGG_ARCHS)}")


def vgg_layer_names(arch: str) -> tuple[str, ...]:
    """Name of every entry of ``features`` in index order (``conv1_1``, ``relu1_1``, ..., ``pool5``)."""
    _check_arch(arch)
    names: list[str] = []
    for b, n in enumerate(VGG_BLOCKS[arch], start=1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return tuple(names)


def vgg_layer_index(arch: str, name: str) -> int:
    """Index in ``features`` of a named layer; AgdError naming the valid names when unknown."""
    names = vgg_layer_names(arch)
    if name not in names:
        raise AgdError(f"{arch} layer {name!r}: unknown; valid names are convB_I, reluB_I, poolB "
                       f"({', '.join(n for n in names if n.startswith('relu'))}, ...)")
    return names.index(name)


def vgg_state_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """``features.N.weight`` / ``features.N.bias`` -> shape, exactly the keys of torchvision's ``features``."""
    _check_arch(arch)
    shapes: dict[str, tuple[int, ...]] = {}
    cin, idx = 3, 0
    for cout, n in zip(VGG_CHANNELS, VGG_BLOCKS[arch]):
        for _ in range(n):
            shapes[f"features.{idx}.weight"] = (cout, cin, 3, 3)
            shapes[f"features.{idx}.bias"] = (cout,)
            cin, idx = cout, idx + 2
        idx += 1  # max-pool
    return shapes


class VGGFeatures(nn.Module):
    """Frozen VGG ``features`` (torchvision indices) with ImageNet normalisation and named taps.

    ``last_layer``: build ``features`` only up to this layer (inclusive); None builds all of it. Weights are
    random until loaded (:func:`load_vgg` or ``load_state_dict`` with torchvision keys)."""

    def __init__(self, arch: str = "vgg16", last_layer: str | None = None) -> None:
        super().__init__()
        _check_arch(arch)
        self.arch = arch
        names = vgg_layer_names(arch)
        end = len(names) if last_layer is None else vgg_layer_index(arch, last_layer) + 1
        layers: list[nn.Module] = []
        cin = 3
        for name in names[:end]:
            if name.startswith("conv"):
                cout = VGG_CHANNELS[int(name[4]) - 1]
                layers.append(nn.Conv2d(cin, cout, 3, padding=1))
                cin = cout
            elif name.startswith("relu"):
                layers.append(nn.ReLU())  # not in place: a tapped conv output must survive the next layer
            else:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.layer_names: tuple[str, ...] = names[:end]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(False)  # always a fixed feature extractor

    def forward(self, x: Tensor, layers: tuple[str, ...] | list[str]) -> dict[str, Tensor]:
        """Features of [0, 1] images at the named layers; runs only up to the deepest of them."""
        if not layers:
            return {}
        idx = {}
        for name in layers:
            if name not in self.layer_names:
                vgg_layer_index(self.arch, name)  # raises for an unknown name
                raise AgdError(f"{self.arch} layer {name!r}: beyond {self.layer_names[-1]}, the deepest layer "
                               "this extractor was built with")
            idx[self.layer_names.index(name)] = name
        h = (x - self.mean) / self.std
        out: dict[str, Tensor] = {}
        for i, layer in enumerate(self.features[: max(idx) + 1]):
            h = layer(h)
            if i in idx:
                out[idx[i]] = h
        return out


@dataclass(frozen=True)
class VGGWeights:
    """The weight file used: path, full sha256, and how it was verified (``full``: equal to torchvision's
    known file; ``prefix``: the name's 8-hex-digit suffix; ``none``: the name carries no checksum)."""

    arch: str
    path: str
    sha256: str
    verified: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


_PREFIX_RE = re.compile(r"-([0-9a-fA-F]{8})$")


def resolve_vgg_path(weights: str | os.PathLike, arch: str) -> Path:
    """The file itself, or torchvision's file name inside a folder; AgdError naming the expected file."""
    _check_arch(arch)
    expected = VGG_FILES[arch]
    p = Path(weights).expanduser()
    if p.is_dir():
        p = p / expected.name
    if not p.is_file():
        raise AgdError(f"{arch.upper()} weights {p}: no such file; expected torchvision's {expected.name} "
                       f"(sha256 {expected.sha256}, {expected.size:,} bytes); agd never downloads it")
    return p


def verify_vgg_file(path: Path, arch: str) -> VGGWeights:
    """Check the file's sha256 (full for torchvision's own name, else the name's 8-hex prefix if any) and
    return it with its full sha256."""
    known = VGG_FILES[arch]
    what = f"{arch.upper()} weights"
    if path.name == known.name:
        verify_sha256(path, known.sha256, what=what)
        return VGGWeights(arch, str(path), known.sha256, "full")
    m = _PREFIX_RE.search(path.stem)
    if m:
        verify_sha256(path, m.group(1), what=what)
        return VGGWeights(arch, str(path), sha256_file(path), "prefix")
    return VGGWeights(arch, str(path), sha256_file(path), "none")


def _features_state(path: Path, arch: str) -> dict[str, Tensor]:
    """The file's ``features.*`` tensors, checked against the full torchvision layout of ``arch``."""
    sd = unwrap_state_dict(load_checkpoint(path), path)
    what = f"{arch.upper()} weights {path}"
    feats = {k: v for k, v in sd.items() if k.startswith("features.")}
    other = sorted(k for k in sd if not k.startswith(("features.", "classifier.")))
    if other:
        raise AgdError(f"{what}: not a torchvision {arch} state dict (unexpected keys {other[:4]})")
    shapes = vgg_state_shapes(arch)
    missing = sorted(set(shapes) - set(feats))
    extra = sorted(set(feats) - set(shapes))
    if missing or extra:
        raise AgdError(f"{what}: does not fit torchvision's {arch}.features (missing {missing[:4]}, "
                       f"unexpected {extra[:4]})")
    bad = [f"{k} {tuple(v.shape)} != {shapes[k]}" for k, v in feats.items() if tuple(v.shape) != shapes[k]]
    if bad:
        raise AgdError(f"{what}: does not fit torchvision's {arch}.features ({'; '.join(bad[:3])})")
    return feats


def load_vgg(weights: str | os.PathLike, arch: str = "vgg16", last_layer: str | None = None,
             device: str | torch.device = "cpu") -> tuple[VGGFeatures, VGGWeights]:
    """Build :class:`VGGFeatures` (up to ``last_layer``), load a torchvision-format state dict file into it
    and return it frozen on ``device`` with the file's record. The file is read with
    ``torch.load(weights_only=True)`` (:func:`agd.io.load_checkpoint`); every ``features`` key of the full
    architecture must be present with torchvision's shape, the ``classifier`` keys are ignored."""
    _check_arch(arch)
    path = resolve_vgg_path(weights, arch)
    record = verify_vgg_file(path, arch)
    feats = _features_state(path, arch)
    model = VGGFeatures(arch, last_layer)
    keep = {k: v for k, v in feats.items() if k in model.state_dict()}
    model.load_state_dict(keep, strict=True)
    return model.to(device), record
