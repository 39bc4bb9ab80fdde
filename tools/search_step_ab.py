"""Median wall time of a real search step (architecture + weight step) at a search preset's batch and crop,
on the built-in sample images and a real teacher, for A/B timing of two checkouts in one run:

    for c in OLD NEW; do (cd $c && .venv/bin/python tools/search_step_ab.py --preset small); done

Uses only APIs that agd has had since its search existed (get_search_config, search.data, make_loss,
macs_budget, Search.search_step), so the same file times an older commit. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--teacher", default="realesrgan-x4plus")
    ap.add_argument("--steps", type=int, default=4, help="timed search steps (after one untimed)")
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="search config overrides (this checkout's fields), e.g. --set sandwich=False")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    from agd.cost import count_macs
    from agd.distill.settings import make_loss
    from agd.runs import RunDir
    from agd.search import Search, get_search_config, macs_budget
    from agd.search import data as D
    from agd.space import SearchSpace, get_config
    from agd.teachers import load_teacher

    over = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        over[k] = {"True": True, "False": False}.get(v, v)
    cfg = get_search_config(a.preset, **over)
    teacher = load_teacher(a.teacher)
    space = SearchSpace(get_config(cfg.space or {"translation": "translation", "sr": f"sr-x{teacher.info.scale}"}[teacher.info.task]))
    tm = count_macs(teacher.module, (1, 3, *space.config.reference_size))
    budget = macs_budget(space, ratio=a.ratio, teacher_macs=tm)
    tmp = Path(tempfile.mkdtemp())
    items = D.prepare(D.load_images(None), teacher, cache_dir=Path(".cache/teacher-cache-ab"), max_side=cfg.max_side,
                      device="cpu")
    loss = make_loss(cfg.loss, teacher, None, "cpu")
    search = Search(cfg, teacher, items, budget, loss, RunDir.open(tmp / "run", resume=False))
    search.step = cfg.pretrain_steps
    times, phases = [], []
    for k in range(a.steps + 1):
        t0 = time.perf_counter()
        rec = search.search_step()
        dt = time.perf_counter() - t0
        search.step += 1
        if k:
            times.append(dt)
            phases.append({key[3:]: v for key, v in rec.items() if key.startswith("ms_")})
    import agd

    out = {"agd": str(Path(agd.__file__).parent), "set": over, "preset": a.preset, "teacher": a.teacher, "batch": cfg.batch, "patch": cfg.patch,
           "threads": torch.get_num_threads(), "step_s_median": statistics.median(times), "step_s": times,
           "loss": loss.describe()["config"]["content_layers"], "sandwich": getattr(cfg, "sandwich", False)}
    if phases and phases[0]:
        out["phases_ms_median"] = {p: statistics.median(x[p] for x in phases) for p in phases[0]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
