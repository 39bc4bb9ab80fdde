"""A chosen architecture as plain, versioned JSON.

```json
{"format": "agd-genotype", "version": 1,
 "space": {"kind": "translation", "n_layers": 9, ...},
 "layers": [{"name": "stem", "op": "conv7x7", "width": 48}, ...]}
```
``space`` is the full config of the space it came from, so the genotype alone rebuilds the network;
``task`` and ``scale`` follow from it and are written for people reading the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agd.io import AgdError, atomic_write_text, read_json
from agd.space.config import SpaceConfig, config_from_dict, config_to_dict

FORMAT = "agd-genotype"
VERSION = 1


@dataclass(frozen=True)
class LayerChoice:
    name: str
    op: str
    width: int


@dataclass(frozen=True)
class Genotype:
    config: SpaceConfig
    layers: list[LayerChoice] = field(default_factory=list)

    @property
    def task(self) -> str:
        return self.config.kind

    @property
    def scale(self) -> int:
        return self.config.scale

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "task": self.task, "scale": self.scale,
                "space": config_to_dict(self.config),
                "layers": [{"name": c.name, "op": c.op, "width": c.width} for c in self.layers]}

    def to_json(self) -> str:
        """Readable JSON: one line per header field, the space on one line, one line per layer."""
        d = self.to_dict()
        head = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items() if k != "layers")
        layers = ",\n".join(f"  {json.dumps(item)}" for item in d["layers"])
        return f"{{\n{head},\n \"layers\": [\n{layers}\n ]\n}}\n"

    def save(self, path: str | Path) -> Path:
        atomic_write_text(path, self.to_json())
        return Path(path)

    @classmethod
    def from_dict(cls, d: Any, what: str = "genotype") -> "Genotype":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise AgdError(f"{what}: not an agd genotype (expected \"format\": \"{FORMAT}\")")
        if d.get("version") != VERSION:
            raise AgdError(f"{what}: version {d.get('version')!r} is not supported (this agd reads version {VERSION})")
        for key in ("space", "layers"):
            if key not in d:
                raise AgdError(f"{what}: missing {key!r}")
        cfg = config_from_dict(d["space"], f"{what}: space")
        layers = []
        for i, item in enumerate(d["layers"]):
            if not isinstance(item, dict) or set(item) != {"name", "op", "width"}:
                raise AgdError(f"{what}: layer {i} must be {{\"name\", \"op\", \"width\"}}, got {item!r}")
            if not isinstance(item["width"], int) or isinstance(item["width"], bool):
                raise AgdError(f"{what}: layer {item['name']}: width {item['width']!r} is not an integer")
            layers.append(LayerChoice(str(item["name"]), str(item["op"]), item["width"]))
        g = cls(cfg, layers)
        from agd.space.space import SearchSpace

        try:
            SearchSpace(cfg).validate(g)
        except AgdError as e:
            raise AgdError(f"{what}: {str(e).removeprefix('genotype: ')}") from None
        return g

    @classmethod
    def load(cls, path: str | Path) -> "Genotype":
        return cls.from_dict(read_json(path, "genotype"), f"genotype {Path(path)}")
