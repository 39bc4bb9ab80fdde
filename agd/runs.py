"""Run folders: everything a search, training or evaluation leaves behind, written atomically.

```
RUN/
  config.yaml        resolved configuration (every default written out), what the run was asked to do
  checkpoint.pt      latest state (weights, optimisers, RNG, history), torch.save of plain data:
                     loads with torch.load(weights_only=True); replaced atomically
  metrics.jsonl      one JSON record per step
  ...                the command's results (genotype.json, *.safetensors, history.json, plots/, report.md)
```
``--resume`` continues from ``checkpoint.pt``; records of ``metrics.jsonl`` past the checkpoint are
dropped so a resumed run's log equals an uninterrupted one's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agd.io import AgdError, atomic_write_text, load_checkpoint, save_checkpoint


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
        return self.path / "checkpoint.pt"

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
