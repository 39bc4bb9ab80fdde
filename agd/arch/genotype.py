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
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agd.io import AgdError, atomic_write_text, read_json
from agd.space.config import OfSpace, SpaceConfig, config_from_dict, config_to_dict
from agd.space.space import SearchSpace, op_valid

FORMAT = "agd-genotype"
VERSION = 1


@dataclass(frozen=True)
class LayerChoice:
    name: str
    op: str
    width: int


@dataclass(frozen=True)
class Genotype(OfSpace):
    config: SpaceConfig
    layers: list[LayerChoice] = field(default_factory=list)

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
        try:
            SearchSpace(cfg).validate(g)
        except AgdError as e:
            raise AgdError(f"{what}: {str(e).removeprefix('genotype: ')}") from None
        return g

    @classmethod
    def load(cls, path: str | Path) -> "Genotype":
        return cls.from_dict(read_json(path, "genotype"), f"genotype {Path(path)}")


# ------------------------------------------------------------------ genotypes of a space
def macs_extremes(space: SearchSpace, hw: tuple[int, int] | None = None) -> tuple[tuple[int, Genotype], tuple[int, Genotype]]:
    """((min MACs, its genotype), (max MACs, its genotype)) by dynamic programming over the width chain."""
    sizes = space.input_sizes(hw)
    out = []
    for better in (min, max):
        best: dict[int, tuple[int, list[LayerChoice]]] = {space.config.in_ch: (0, [])}
        for i, spec in enumerate(space.layers):
            nxt: dict[int, tuple[int, list[LayerChoice]]] = {}
            for ci, (cost, path) in best.items():
                for co in spec.widths:
                    for op in spec.ops:
                        if not op_valid(op, spec, ci, co):
                            continue
                        c = cost + space.op_macs(i, op, ci, co, sizes[i])
                        if co not in nxt or better(c, nxt[co][0]) != nxt[co][0]:
                            nxt[co] = (c, path + [LayerChoice(spec.name, op, co)])
            best = nxt
        cost, path = better(best.values(), key=lambda t: t[0])
        out.append((cost, Genotype(space.config, path)))
    return out[0], out[1]


def random_genotype(space: SearchSpace, rng: random.Random) -> Genotype:
    """A uniformly random valid choice per layer (widths first, then a valid operator)."""
    layers, c_in = [], space.config.in_ch
    for spec in space.layers:
        co = rng.choice(spec.widths)
        ops = [op for op in spec.ops if op_valid(op, spec, c_in, co)]
        layers.append(LayerChoice(spec.name, rng.choice(ops), co))
        c_in = co
    return Genotype(space.config, layers)


def max_genotype(space: SearchSpace, op: str | None = None) -> Genotype:
    """Largest widths everywhere, with ``op`` (or each layer's first operator) in searchable layers."""
    layers = []
    for spec in space.layers:
        o = op if (op in spec.ops and op != "identity") else spec.ops[0]
        layers.append(LayerChoice(spec.name, o, max(spec.widths)))
    return Genotype(space.config, layers)
