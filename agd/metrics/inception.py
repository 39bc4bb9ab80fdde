"""InceptionV3 feature extractor of the original (TensorFlow) FID, loadable from pytorch-fid's weights.

Conventions:
- input: float images in [0, 1], shape (N, 3, H, W), any H and W; they are resized to 299x299
  (bilinear, ``align_corners=False``, no antialiasing) and scaled to [-1, 1], as pytorch-fid does;
- output: the 2048-d "pool3" features, shape (N, 2048): the global average of the last mixed block;
- the architecture is the TensorFlow-ported Inception that the original FID used, i.e. torchvision's
  InceptionV3 layout with the FID changes: the pooling branch of the 35x35 (A), 17x17 (C) and first
  8x8 (E) blocks averages without counting padding, the last 8x8 block max-pools, no auxiliary head,
  and a 1008-class classifier (kept only so the weights file loads strictly; FID never uses it);
- every convolution has no bias and is followed by BatchNorm (eps 0.001) and ReLU; the state-dict
  names (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ``fc.weight``, ...)
  are those of pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``.

The weights are never downloaded: :func:`load_inception` takes the file from an argument or the
``AGD_FID_WEIGHTS`` environment variable and checks its sha256 prefix.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agd.io import AgdError, load_checkpoint, unwrap_state_dict, verify_sha256

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
#: first 8 hex digits of the file's sha256 (torch.hub naming: the suffix of the file name)
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_NAME
FID_WEIGHTS_ENV = "AGD_FID_WEIGHTS"
FID_INPUT_SIZE = 299
FID_FEATURE_DIM = 2048
FID_NUM_CLASSES = 1008

_Size = int | tuple[int, int]


class ConvBN(nn.Module):
    """Convolution without bias, BatchNorm (eps 0.001), ReLU; state-dict names ``conv.*``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel: _Size, stride: int = 1, padding: _Size = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: Tensor) -> Tensor:
    """3x3 stride-1 average pool that, like TensorFlow's, ignores the zero padding."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _max3(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 3, stride=1, padding=1)


class BlockA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (64 + 64 + 96 + pool_features channels)."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class BlockB(nn.Module):
    """35x35 -> 17x17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 (384 + 96 + cin channels)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 / 7x1), c7 inner channels; 4 x 192 out."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row = {"kernel": (1, 7), "padding": (0, 3)}
        col = {"kernel": (7, 1), "padding": (3, 0)}
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, **row)
        self.branch7x7_3 = ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class BlockD(nn.Module):
    """17x17 -> 8x8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 (320 + 192 + cin channels)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs: 320 + 2x384 + 2x384 + 192 = 2048 channels.

    ``pool`` is ``"avg"`` (padding not counted) for Mixed_7b and ``"max"`` for Mixed_7c, as in the
    TensorFlow graph of the original FID.
    """

    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg3(x) if self.pool == "avg" else _max3(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(s),
                self.branch3x3_2b(s),
                self.branch3x3dbl_3a(d),
                self.branch3x3dbl_3b(d),
                self.branch_pool(pooled),
            ],
            1,
        )


class InceptionV3FID(nn.Module):
    """The FID InceptionV3 (see the module docstring): ``forward`` maps (N, 3, H, W) images in [0, 1]
    to (N, 2048) pool3 features. Random weights until :func:`load_inception` (or
    ``load_state_dict``) fills them in."""

    #: every input is resized to this (H, W) first (bilinear, align_corners=False)
    input_size: tuple[int, int] = (FID_INPUT_SIZE, FID_INPUT_SIZE)

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, pool="avg")
        self.Mixed_7c = BlockE(2048, pool="max")
        self.fc = nn.Linear(FID_FEATURE_DIM, FID_NUM_CLASSES)  # unused by FID; present for strict loading

    @staticmethod
    def preprocess(images: Tensor) -> Tensor:
        """[0, 1] images of any size -> 299x299 bilinear (align_corners=False) -> [-1, 1]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        x = F.interpolate(images, size=InceptionV3FID.input_size, mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0

    def forward(self, images: Tensor) -> Tensor:
        x = self.preprocess(images)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
            self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c,
        ):  # fmt: skip
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _missing_weights_message(detail: str) -> str:
    return (
        f"FID Inception weights {detail}: agd needs pytorch-fid's {FID_WEIGHTS_NAME} (from pytorch-fid's "
        f"GitHub releases, {FID_WEIGHTS_URL}; agd never downloads at run time); pass its path as the "
        f"weights argument or set {FID_WEIGHTS_ENV}=/path/to/{FID_WEIGHTS_NAME}"
    )


def resolve_weights_path(weights: str | os.PathLike | None = None) -> Path:
    """The weights file from ``weights`` or, when that is None, from ``$AGD_FID_WEIGHTS``.

    A folder is searched for the file name ``pt_inception-2015-12-05-6726825d.pth``. Raises
    AgdError (naming the expected file and where it comes from) when nothing usable is given."""
    if weights is None:
        env = os.environ.get(FID_WEIGHTS_ENV, "").strip()
        if not env:
            raise AgdError(_missing_weights_message(f"not given (no argument, {FID_WEIGHTS_ENV} unset)"))
        weights = env
    path = Path(weights).expanduser()
    if path.is_dir():
        path = path / FID_WEIGHTS_NAME
    if not path.is_file():
        raise AgdError(_missing_weights_message(f"{path}: no such file"))
    return path


def load_inception(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> InceptionV3FID:
    """Build :class:`InceptionV3FID`, load pytorch-fid's weights strictly, return it in eval mode on
    ``device`` with gradients off.

    ``weights``: path of ``pt_inception-2015-12-05-6726825d.pth`` (or a folder holding it); None
    reads ``$AGD_FID_WEIGHTS``. The file's sha256 must start with ``6726825d``; it is read with
    ``torch.load(weights_only=True)`` through :func:`agd.io.load_checkpoint`."""
    path = resolve_weights_path(weights)
    verify_sha256(path, FID_WEIGHTS_SHA256_PREFIX, what="FID Inception weights")
    state = unwrap_state_dict(load_checkpoint(path), path)
    model = InceptionV3FID()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise AgdError(f"FID Inception weights {path}: do not fit the FID InceptionV3 ({detail[:300]})") from None
    model.requires_grad_(False)
    return model.eval().to(device)
