"""Run folders: everything a search, training or evaluation leaves behind, written atomically.

```
RUN/
  config.yaml        resolved configuration (every default written out), what the run was asked to do
  checkpoint.safetensors  latest state (weights, optimisers, RNG, history): every tensor in safetensors,
                     everything else as JSON in its metadata, so one file is replaced atomically and
                     loading it runs no code
  metrics.jsonl      one JSON record per step
  ...                the command's results (genotype.json, *.safetensors, history.json, plots/, report.md)
```
``--resume`` continues from ``checkpoint.safetensors``; records of ``metrics.jsonl`` past the checkpoint are
dropped so a resumed run's log equals an uninterrupted one's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from agd.io import AgdError, atomic_path, atomic_write_text


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Nested dicts/lists/tuples of tensors and JSON values → JSON with tensor references."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError("checkpoint: dict keys must be str or int")
        return {"__dict__": [[k, _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint: cannot store a {type(obj).__name__}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """One safetensors file: the tensors, and the rest of ``state`` as JSON metadata; atomic."""
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_flatten(state, tensors))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "agd-checkpoint", "version": "1", "state": structure})


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "agd-checkpoint":
                raise AgdError(f"checkpoint {path}: not an agd checkpoint")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except AgdError:
        raise
    except Exception as e:  # truncated or damaged file
        raise AgdError(f"checkpoint {path}: cannot be read ({e})") from None
    return _unflatten(json.loads(meta["state"]), tensors)


@dataclass
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @classmethod
    def open(cls, path: str | Path, *, resume: bool) -> "RunDir":
        run = cls(Path(path))
        if resume:
            if not run.checkpoint.is_file():
                raise AgdError(f"--resume: {run.checkpoint} does not exist (nothing to resume)")
        elif run.checkpoint.is_file():
            raise AgdError(f"run folder {run.path} holds a run already; pass --resume to continue it or choose another --out")
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AgdError(f"run folder {run.path}: cannot be created ({e.strerror})") from None
        return run

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.safetensors"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        p = self.path / "config.yaml"
        if not p.is_file():
            raise AgdError(f"run folder {self.path}: config.yaml is missing")
        return yaml.safe_load(p.read_text())

    def save_state(self, state: dict[str, Any]) -> None:
        try:
            save_checkpoint(state, self.checkpoint)
        except OSError as e:
            raise AgdError(f"checkpoint {self.checkpoint}: could not be written ({e.strerror}); the previous "
                           "checkpoint is intact") from None

    def load_state(self) -> dict[str, Any]:
        return load_checkpoint(self.checkpoint)

    def log(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, step: int) -> None:
        """Keep only records with ``step < step`` (called on resume)."""
        if not self.metrics.is_file():
            return
        keep = [line for line in self.metrics.read_text().splitlines() if line.strip() and json.loads(line)["step"] < step]
        atomic_write_text(self.metrics, "".join(line + "\n" for line in keep))

    def read_log(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class BudgetRecord:
    """A search's budget as its ``config.yaml`` records it, and so what ``--resume`` continues with: a MACs
    budget (``macs``), or a latency budget (``value`` ms on ``latency_table``'s ``target`` at ``size``, of its
    ``precision`` and ``runtime``). Older run folders lack ``size``, ``precision`` and ``runtime`` (None)."""

    kind: str  # "macs" or "latency"
    value: float
    latency_table: str | None = None
    target: str | None = None
    size: tuple[int, int] | None = None
    deployment: Any = None
    precision: str | None = None
    runtime: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "macs": self.value if self.kind == "macs" else None,
                "latency_table": self.latency_table, "target": self.target,
                "size": list(self.size) if self.size else None, "deployment": self.deployment,
                "precision": self.precision, "runtime": self.runtime}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BudgetRecord":
        macs = d["kind"] == "macs"
        return cls(kind=d["kind"], value=d["macs"] if macs else d["value"],
                   latency_table=None if macs else d["latency_table"], target=None if macs else d["target"],
                   size=None if macs or not d.get("size") else tuple(d["size"]), deployment=d.get("deployment"),
                   precision=None if macs else d.get("precision"), runtime=None if macs else d.get("runtime"))

    def job_fields(self) -> dict[str, Any]:
        """The budget fields of a search job that continues this run (the ratio is resolved into ``macs``)."""
        if self.kind == "macs":
            return {"ratio": None, "macs": self.value, "latency": None}
        return {"ratio": None, "macs": None, "latency": self.value, "latency_table": Path(self.latency_table),
                "target": self.target, "latency_size": self.size, "precision": self.precision,
                "runtime": self.runtime}
