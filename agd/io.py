"""File handling shared by every part of agd: atomic writes, sha256, safe checkpoint loading.

Rules kept here so no caller can get them wrong:
- outputs and checkpoints are written to a temporary file in the destination folder and renamed
  into place, so an interrupted run never leaves a truncated file behind;
- checkpoints are read with ``torch.load(weights_only=True)`` or safetensors; a pickle that needs
  code to unpickle is refused with an explanation, never executed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors.torch import load_file, save_file


class AgdError(Exception):
    """An error caused by user input (a file, an argument); the CLI prints it on one line."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str, what: str = "file") -> None:
    """Raise AgdError unless the file's sha256 equals ``expected`` (or starts with it, for the
    8-hex-digit prefixes that torch.hub-style file names carry)."""
    expected = expected.lower()
    got = sha256_file(path)
    ok = got.startswith(expected) if len(expected) < 64 else got == expected
    if not ok:
        raise AgdError(f"{what} {path}: sha256 {got} does not match the expected {expected}")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it is renamed onto ``dest``.

    On an exception the temporary file is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_write_json(dest: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(dest, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Parse a JSON file; AgdError ``"<what> <path>: ..."`` when it is missing or not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AgdError(f"{what} {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise AgdError(f"{what} {path}: invalid JSON ({e})") from None


def save_checkpoint(obj: Any, dest: str | os.PathLike) -> None:
    """torch.save a weights-only-loadable object (tensors, dicts, lists, numbers, strings) atomically.
    ``.safetensors`` destinations take a flat ``{name: tensor}`` mapping."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        if dest.suffix == ".safetensors":

            save_file({k: v.contiguous() for k, v in obj.items()}, str(tmp))
        else:
            torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint without running code from it.

    ``.safetensors`` files go through safetensors; anything else through
    ``torch.load(weights_only=True)``. A pickle that needs arbitrary classes is refused with an
    AgdError that says so (and how to convert it), instead of being executed.
    """
    path = Path(path)
    if not path.is_file():
        raise AgdError(f"checkpoint {path}: no such file")
    if path.suffix == ".safetensors":

        try:
            return load_file(str(path), device=str(map_location))
        except Exception as e:  # safetensors raises its own error types
            raise AgdError(f"checkpoint {path}: not a readable safetensors file ({e})") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise AgdError(
                f"checkpoint {path}: refused, it is a pickle that needs code to load ({msg.strip()}); "
                "agd never unpickles code from a file: re-save its state_dict (torch.save(model.state_dict()))"
                " or convert it to safetensors"
            ) from None
        raise AgdError(f"checkpoint {path}: cannot be read ({msg.strip()})") from None


def unwrap_state_dict(obj: Any, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the flat ``{name: tensor}`` mapping inside common checkpoint wrappers
    (``params_ema``, ``params``, ``state_dict``, ``model``, ``generator``) and strip the ``module.``
    prefix that DataParallel/DDP add."""
    if isinstance(obj, Mapping):
        for key in ("params_ema", "params", "state_dict", "model_state_dict", "generator", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(torch.is_tensor(v) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise AgdError(f"{path}: no state_dict of tensors found (top-level type {type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out
