"""A teacher-output cache on disk, so a teacher's forward pass runs once per input across runs.

Key: the teacher's identity string (which changes when its weights change), the content hash of the
source image (sha256 of its decoded pixels, see :func:`image_hash`), and the crop of that image the
teacher saw (``(top, left, height, width)`` in source pixels, or ``None`` for the whole image), plus an
optional free-form ``variant`` (e.g. a degradation). Entries are safetensors files written atomically;
a damaged or mismatching entry is recomputed, never trusted. The cache is safe to share between
processes (concurrent writers of one key write identical bytes and ``os.replace`` is atomic).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from agd.io import AgdError, atomic_path

Crop = tuple[int, int, int, int] | None


def image_hash(img: torch.Tensor) -> str:
    """sha256 of an image's content: its shape, dtype and raw values (CPU, contiguous)."""
    t = img.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}|".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class TeacherCache:
    root: Path
    teacher_identity: str
    hits: int = field(default=0, init=False)
    misses: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.teacher_identity:
            raise AgdError("teacher cache: the teacher identity must not be empty")
        self._dir = self.root / hashlib.sha256(self.teacher_identity.encode()).hexdigest()[:20]

    def key(self, img_hash: str, crop: Crop = None, variant: str = "") -> str:
        spec = json.dumps({"teacher": self.teacher_identity, "image": img_hash,
                           "crop": list(crop) if crop is not None else None, "variant": variant}, sort_keys=True)
        return hashlib.sha256(spec.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self._dir / key[:2] / f"{key}.safetensors"

    def get(self, img_hash: str, crop: Crop = None, variant: str = "") -> torch.Tensor | None:
        """The cached output, or None (missing or unreadable entries count as missing)."""

        key = self.key(img_hash, crop, variant)
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            out = load_file(str(p))["output"]
        except (SafetensorError, KeyError, OSError, RuntimeError):
            return None
        return out

    def put(self, img_hash: str, crop: Crop, output: torch.Tensor, variant: str = "") -> Path:

        key = self.key(img_hash, crop, variant)
        p = self.path(key)
        meta = {"teacher": self.teacher_identity, "image": img_hash, "crop": json.dumps(crop), "variant": variant}
        with atomic_path(p) as tmp:
            save_file({"output": output.detach().to("cpu").contiguous()}, str(tmp), metadata=meta)
        return p

    def run(self, fn: Callable[[torch.Tensor], torch.Tensor], inp: torch.Tensor, *, img_hash: str,
            crop: Crop = None, variant: str = "") -> torch.Tensor:
        """``fn(inp)`` through the cache; ``inp`` is the (crop of the) image identified by ``img_hash``
        and ``crop``. Returns the output on ``inp``'s device."""
        out = self.get(img_hash, crop, variant)
        if out is not None:
            self.hits += 1
            return out.to(inp.device)
        self.misses += 1
        out = fn(inp)
        self.put(img_hash, crop, out, variant)
        return out
