"""What ``agd space show`` and ``agd arch show`` report: a space's choices and cost range, a genotype layer by layer
(and its drawing)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from agd.arch import Genotype, derive, macs_extremes
from agd.cost import count, count_macs, count_params
from agd.io import AgdError, atomic_path
from agd.space import SearchSpace, get_config, task_default
from agd.teachers import get_teacher_info


def space_summary(name: str, hw: tuple[int, int] | None = None) -> dict:
    """The space's layers and choices, its size, its MACs extremes at ``hw`` (the reference input size by
    default) and the matching teacher's MACs at the same input."""
    space = SearchSpace(get_config(name))
    hw = tuple(hw or space.config.reference_size)
    (mn, gmin), (mx, gmax) = macs_extremes(space, hw)
    sizes = space.input_sizes(hw)
    teacher = get_teacher_info(task_default(space.kind).teacher)
    teacher_macs = None
    if space.kind == "translation" or teacher.scale == space.scale:
        teacher_macs = count_macs(teacher.build_architecture(), (1, space.config.in_ch, *hw))
    return {
        "space": name, "kind": space.kind, "scale": space.scale, "input": [1, space.config.in_ch, *hw],
        "layers": [{"name": s.name, "ops": list(s.ops), "widths": list(s.widths), "input_size": list(sz),
                    "stride": s.stride} for s, sz in zip(space.layers, sizes)],
        "searchable_layers": sum(s.searchable for s in space.layers),
        "architectures": space.num_architectures(),
        "min_macs": mn, "max_macs": mx,
        "min_genotype": gmin.to_dict(), "max_genotype": gmax.to_dict(),
        "teacher": teacher.name, "teacher_macs": teacher_macs,
    }


def arch_rows(genotype, hw: tuple[int, int] | None = None) -> tuple[list[dict], dict]:
    """Per layer of the derived generator: operator, widths, sizes, MACs (counted by tracing) and params."""
    space = SearchSpace(genotype.config)
    hw = tuple(hw or space.config.reference_size)
    net = derive(genotype)
    cost = count(net, (1, space.config.in_ch, *hw))
    per_layer: dict[int, int] = {}
    for name, macs in cost.by_module.items():
        parts = name.split(".")
        if len(parts) >= 2 and parts[0] == "layers":
            per_layer[int(parts[1])] = per_layer.get(int(parts[1]), 0) + macs
    sizes = space.input_sizes(hw)
    rows, c_in = [], space.config.in_ch
    for i, (choice, module) in enumerate(zip(genotype.layers, net.layers)):
        out_size = sizes[i + 1] if i + 1 < len(sizes) else (hw[0] * space.scale, hw[1] * space.scale)
        rows.append({"name": choice.name, "op": choice.op, "in": c_in, "out": choice.width,
                     "input_size": list(sizes[i]), "output_size": list(out_size),
                     "macs": per_layer.get(i, 0), "params": count_params(module)})
        c_in = choice.width
    total = {"macs": cost.macs, "params": cost.params, "input": [1, space.config.in_ch, *hw],
             "kind": space.kind, "scale": space.scale}
    return rows, total


def draw_architecture(rows: list[dict], total: dict, path: Path, title: str = "") -> Path:
    """A PNG of the generator: one box per layer, height proportional to its width (channels), colour by
    operator, labelled with operator, widths, output size and MACs."""
    colours = {"conv1x1": (141, 211, 199), "conv3x3": (128, 177, 211), "conv3x3_d2": (190, 186, 218),
               "resblock": (251, 128, 114), "dwsblock": (253, 180, 98), "identity": (217, 217, 217),
               "conv7x7": (179, 222, 105), "deconv3x3": (252, 205, 229)}
    box_w, gap, top, bottom = 86, 14, 60, 120
    max_c = max(max(r["out"] for r in rows), 8)
    max_h = 220
    width = gap + len(rows) * (box_w + gap)
    height = top + max_h + bottom
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((gap, 10), title or f"{total['kind']} generator", fill="black", font=font)
    d.text((gap, 28), f"{total['macs'] / 1e9:.3f} GMACs, {total['params'] / 1e6:.3f} M params at "
                      f"{'x'.join(map(str, total['input']))}", fill="black", font=font)
    mid = top + max_h // 2
    for i, r in enumerate(rows):
        x0 = gap + i * (box_w + gap)
        h = max(6, int(max_h * r["out"] / max_c))
        colour = colours.get(r["op"], (200, 200, 200))
        d.rectangle([x0, mid - h // 2, x0 + box_w, mid + h // 2], fill=colour, outline="black")
        if i:
            d.line([x0 - gap, mid, x0, mid], fill="black", width=2)
        y = top + max_h + 8
        for line in (r["name"], r["op"], f"{r['in']}->{r['out']} ch", "x".join(map(str, r["output_size"])),
                     f"{r['macs'] / 1e9:.3f} GMACs"):
            d.text((x0, y), line, fill="black", font=font)
            y += 14
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def load_genotype(path: str | Path):
    p = Path(path)
    if not p.is_file():
        raise AgdError(f"genotype {p}: no such file")
    return Genotype.load(p)
