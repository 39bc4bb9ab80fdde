"""The baseline job (``agd baseline``, and ``agd compress --baselines``): honest baselines at the searched network's budget, trained exactly like it.

(a) a hand-designed network: residual blocks in every searchable layer (the layer's only operator where
it has no choice), one width ratio everywhere, the ratio whose MACs come closest to the budget;
(b) random architectures within ±tolerance of the budget: random operator and width logits, then the
most probable architecture within the band (:func:`agd.search.derive_within_budget`), i.e. a random
point of the band, one per seed. Each is trained with the same preset, images and seed schedule as the
searched student and evaluated on the same images; the table and a Pareto chart compare them.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from agd.arch import Genotype, LayerChoice
from agd.io import atomic_write_json, atomic_write_text
from agd.jobs.train import run_eval_job, run_train_job
from agd.search import derive_within_budget
from agd.search.plots import plot_pareto
from agd.space import SearchSpace


def hand_designed(space: SearchSpace, budget: float, tol: float = 0.05) -> Genotype:
    """Uniform residual blocks of one width ratio, as many as the budget allows: for each width ratio, the
    resblock network with its last 0, 1, 2, ... blocks (where an identity is allowed) made identities. Of
    those within ``tol`` of ``budget``, the deepest (the most resblocks; then the closest); if none is, the
    closest. Width alone moves the MACs in steps of 20-30 %, too coarse to compare at the same budget as
    the searched and random networks (until 2026-12-03 the translation one had 25 % more MACs)."""
    n_ratios = max(len(s.widths) for s in space.layers)
    best = None
    for r in range(n_ratios):
        layers = []
        for spec in space.layers:
            w = spec.widths[min(r, len(spec.widths) - 1)] if len(spec.widths) > 1 else spec.widths[0]
            op = "resblock" if "resblock" in spec.ops else spec.ops[0]
            layers.append(LayerChoice(spec.name, op, w))
        # blocks that may become identities: resblocks whose input width equals their output width
        widths_in = [space.config.in_ch] + [c.width for c in layers[:-1]]
        free = [i for i, (c, spec, ci) in enumerate(zip(layers, space.layers, widths_in))
                if c.op == "resblock" and "identity" in spec.ops and ci == c.width]
        for k in range(len(free) + 1):
            cut = set(free[len(free) - k:])
            g = Genotype(space.config, [LayerChoice(c.name, "identity", c.width) if i in cut else c
                                        for i, c in enumerate(layers)])
            space.validate(g)
            gap = abs(space.genotype_macs(g) - budget)
            # rank: within tol first, then more resblocks (within tol only), then the smaller gap
            blocks = sum(c.op == "resblock" for c in g.layers)
            key = (gap > tol * budget, -blocks if gap <= tol * budget else 0, gap)
            if best is None or key < best[0]:
                best = (key, g)
    return best[1]


def random_within_budget(space: SearchSpace, budget: float, seed: int, tol: float = 0.05) -> Genotype:
    g = torch.Generator().manual_seed(seed)
    ops = [torch.softmax(torch.randn(len(s.ops), generator=g) * 3, 0) for s in space.layers]
    widths = [torch.softmax(torch.randn(len(s.widths), generator=g) * 3, 0) for s in space.layers]
    return derive_within_budget(space, ops, widths, space.macs_tables(), budget, tol=tol)


def run_baseline_job(searched: Path, *, teacher_spec=None, images: Path | None, out: Path, preset: str, seeds: int,
                     device: str, searched_weights: Path | None = None, quiet: bool = False,
                     train_overrides: dict | None = None, eval_images: Path | None = None,
                     exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
                     eval_max_side: int | None = None) -> list[dict[str, Any]]:
    """Train and evaluate the baselines; ``eval_images`` (default: the training images) is a held-out folder,
    evaluated at full size (or at most ``eval_max_side``), e.g. Set14 when training on BSD or T91. ``exclude``
    keeps images out of training and ``only`` picks the evaluation images by name (a held-out split of one
    folder, as ``agd compress`` makes)."""
    console = Console(quiet=quiet)
    g = Genotype.load(searched)
    space = SearchSpace(g.config)
    budget = space.genotype_macs(g)
    candidates: list[tuple[str, Genotype]] = [("hand-designed", hand_designed(space, budget))]
    candidates += [(f"random-{s}", random_within_budget(space, budget, seed=s)) for s in range(seeds)]
    if searched_weights is None:
        candidates.insert(0, ("searched", g))
    out = Path(out)
    eval_images = images if eval_images is None else eval_images
    rows = []
    for name, gen in candidates:
        console.rule(name)
        gpath = gen.save(out / name / "genotype.json")
        run_train_job(gpath, teacher_spec=teacher_spec, images=images, out=out / name / "train", preset=preset,
                      device=device, resume=(out / name / "train" / "checkpoint.safetensors").is_file(), quiet=quiet,
                      overrides=train_overrides, exclude=exclude)
        ev = run_eval_job(gpath, out / name / "train" / "student.safetensors", teacher_spec=teacher_spec, images=eval_images,
                          out=out / name / "eval", device=device, quiet=True, only=only, max_side=eval_max_side)
        rows.append({"name": name, "macs": ev["macs"], "params": ev["params"], **ev["mean"]})
    if searched_weights is not None:
        ev = run_eval_job(searched, searched_weights, teacher_spec=teacher_spec, images=eval_images, out=out / "searched" / "eval",
                          device=device, quiet=True, only=only, max_side=eval_max_side)
        rows.insert(0, {"name": "searched", "macs": ev["macs"], "params": ev["params"], **ev["mean"]})
    base = ev["baseline"]
    rows.append({"name": base, "macs": 0, "params": 0, "psnr_to_teacher": ev["mean"][f"{base}_psnr_to_teacher"],
                 **({"psnr": ev["mean"][f"{base}_psnr"]} if f"{base}_psnr" in ev["mean"] else {})})
    atomic_write_json(out / "baselines.json", rows)
    plot_pareto([r for r in rows if r["macs"] > 0], out / "pareto.png")
    randoms = [r["psnr_to_teacher"] for r in rows if r["name"].startswith("random")]
    lines = ["# agd baseline", "", f"budget: {budget / 1e9:.3f} GMACs (the searched network's)",
             f"trained on: {images or 'built-in samples'}; evaluated on: {eval_images or 'built-in samples'}", "",
             "| network | GMACs | params (M) | PSNR to teacher | PSNR to ground truth |", "|---|---|---|---|---|"]
    for r in rows:
        name = r["name"] if r["macs"] > 0 else f"{r['name']} (no network)"
        lines.append(f"| {name} | {r['macs'] / 1e9:.3f} | {r['params'] / 1e6:.3f} | {r['psnr_to_teacher']:.3f} | "
                     f"{r.get('psnr', float('nan')):.3f} |")
    if randoms:
        mean = statistics.mean(randoms)
        sd = statistics.stdev(randoms) if len(randoms) > 1 else float("nan")
        s = next(r for r in rows if r["name"] == "searched")["psnr_to_teacher"]
        lines += ["", f"random networks: {mean:.3f} ± {sd:.3f} dB (mean ± std over {len(randoms)} seeds); "
                      f"searched − random mean (PSNR to teacher): {s - mean:+.3f} dB"]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "baselines.md", text)
    console.print(text, highlight=False, markup=False)
    return rows
