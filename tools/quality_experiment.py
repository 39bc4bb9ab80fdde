"""The honest experiment of BENCHMARKS.md ("searched against hand-designed and random networks"): for one
teacher, N search seeds, a hand-designed network and M random networks within ±5 % of the same MACs, every
one trained from scratch identically and evaluated on held-out images; then the proxy's rank correlation
(Kendall τ between each architecture's distillation loss in a searched supernet, fixed to it, on the
selection crops, and its PSNR to the teacher after training).

    .venv/bin/python tools/quality_experiment.py --teacher realesrgan-x4plus \\
        --images ../shared/data/sr/BSD68/HR --eval-images ../shared/data/sr/Set14/HR --out runs/exp-sr

Every step is a run folder that resumes, so an interrupted experiment continues where it stopped. Prints
and writes ``experiment.json`` / ``experiment.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--eval-images", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--randoms", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--eval-max-side", type=int, default=None)
    ap.add_argument("--search-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a search-config field for every search, e.g. op_sampling=sample or pretrain_steps=1000")
    a = ap.parse_args()
    search_set = {}
    for kv in a.search_set:
        k, _, v = kv.partition("=")
        try:
            search_set[k] = json.loads(v)
        except json.JSONDecodeError:
            search_set[k] = v

    import torch

    from agd.arch import Genotype
    from agd.distill.settings import make_loss
    from agd.jobs.baseline import hand_designed, random_within_budget
    from agd.jobs.search import SearchJob, run_search_job
    from agd.jobs.train import run_eval_job, run_train_job
    from agd.search import data as D
    from agd.search.engine import _WithCost
    from agd.search.supernet import Supernet
    from agd.space import SearchSpace
    from agd.teachers import load_teacher

    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    over = {"steps": a.train_steps} if a.train_steps else None
    nets: list[tuple[str, Path]] = []
    for seed in range(a.seeds):
        sdir = out / f"search-{seed}"
        if not (sdir / "genotype.json").is_file():
            run_search_job(SearchJob(teacher=a.teacher, images=a.images, out=sdir, preset=a.preset, ratio=a.ratio,
                                     resume=(sdir / "checkpoint.safetensors").is_file(), quiet=True,
                                     overrides={**search_set, "seed": seed}))
        nets.append((f"searched-{seed}", sdir / "genotype.json"))
    gs = [Genotype.load(p) for _, p in nets]
    space = SearchSpace(gs[0].config)
    budget = statistics.mean(space.genotype_macs(g) for g in gs)
    extra = [("hand-designed", hand_designed(space, budget))]
    extra += [(f"random-{s}", random_within_budget(space, budget, seed=s)) for s in range(a.randoms)]
    for name, g in extra:
        nets.append((name, g.save(out / name / "genotype.json")))
    rows = []
    for name, gpath in nets:
        # train/NAME and eval/NAME: the jobs keep their teacher cache beside their folder (out.parent), so every
        # training shares train/.teacher-cache and every evaluation eval/.teacher-cache (the teacher runs once)
        tdir = out / "train" / name
        if not (tdir / "student.safetensors").is_file():
            run_train_job(gpath, teacher_spec=a.teacher, images=a.images, out=tdir, preset=a.preset, quiet=True,
                          resume=(tdir / "checkpoint.safetensors").is_file(), overrides=over)
        ev = run_eval_job(gpath, tdir / "student.safetensors", teacher_spec=a.teacher, images=a.eval_images,
                          out=out / "eval" / name, quiet=True, max_side=a.eval_max_side)
        base = ev["baseline"]
        rows.append({"name": name, "macs": ev["macs"], "psnr_to_teacher": ev["mean"]["psnr_to_teacher"],
                     "psnr": ev["mean"].get("psnr"), base: ev["mean"][f"{base}_psnr_to_teacher"]})
        print(json.dumps(rows[-1]), flush=True)
    # the proxy: each architecture's distillation loss in search seed 0's supernet, fixed to it, on its selection crops
    import yaml
    from safetensors.torch import load_file

    cfg0 = yaml.safe_load((out / "search-0" / "config.yaml").read_text())
    teacher = load_teacher(a.teacher)
    from agd.search import get_search_config

    scfg = get_search_config(a.preset, **{"seed": 0})
    items = D.prepare(D.load_images(a.images), teacher, cache_dir=out / ".teacher-cache", max_side=scfg.max_side,
                      device="cpu")
    _, _, selection = D.split(items)
    crops = D.center_crops(selection, scfg.crop(space.kind), space.scale)
    sn = Supernet(space)
    sn.load_state_dict(load_file(str(out / "search-0" / "supernet.safetensors")))
    model = _WithCost(sn, [t.nan_to_num(0.0) for t in space.macs_tables()], 0.0)
    loss = make_loss(scfg.loss, teacher, None, "cpu")
    for r, (_, gpath) in zip(rows, nets):
        sn.fix(Genotype.load(gpath))
        with torch.no_grad():
            y, _ = model(crops["inp"])
            r["supernet_loss"] = float(loss(y, crops["target"], crops["gt"])[0])
        sn.unfix()
    from scipy.stats import kendalltau

    tau = float(kendalltau([-r["supernet_loss"] for r in rows], [r["psnr_to_teacher"] for r in rows]).statistic)
    searched = [r["psnr_to_teacher"] for r in rows if r["name"].startswith("searched")]
    randoms = [r["psnr_to_teacher"] for r in rows if r["name"].startswith("random")]
    hand = next(r["psnr_to_teacher"] for r in rows if r["name"] == "hand-designed")
    base = rows[0].get("bicubic", rows[0].get("identity"))
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else float("nan")  # noqa: E731
    summary = {"teacher": a.teacher, "images": str(a.images), "eval_images": str(a.eval_images), "preset": a.preset,
               "train_steps": a.train_steps, "budget_macs": budget, "rows": rows, "kendall_tau": tau,
               "searched_mean": statistics.mean(searched), "searched_std": sd(searched),
               "random_mean": statistics.mean(randoms), "random_std": sd(randoms), "hand_designed": hand,
               "trivial_baseline": base, "minutes": (time.time() - t_start) / 60, "search0_config": cfg0["search"]}
    (out / "experiment.json").write_text(json.dumps(summary, indent=1))
    lines = ["| network | GMACs | PSNR to teacher | supernet loss |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['macs'] / 1e9:.2f} | {r['psnr_to_teacher']:.3f} | {r['supernet_loss']:.5f} |" for r in rows]
    lines += ["", f"searched {summary['searched_mean']:.3f} ± {summary['searched_std']:.3f} dB, random "
                  f"{summary['random_mean']:.3f} ± {summary['random_std']:.3f} dB, hand-designed {hand:.3f} dB, "
                  f"trivial baseline {base:.3f} dB; searched − random mean {summary['searched_mean'] - summary['random_mean']:+.3f} dB; "
                  f"Kendall τ (supernet loss vs trained PSNR, {len(rows)} architectures) {tau:+.3f}; "
                  f"{summary['minutes']:.0f} min"]
    (out / "experiment.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
