"""How far a translation teacher's output is from simple colour maps of its input, on held-out images.

For a translation teacher, the identity (the untouched input) is the baseline a student must beat. This
prints, per evaluation set, the PSNR to the teacher (RGB, [0, 1]) of:

- ``identity``: the input itself;
- ``global affine``: one 3x3 colour matrix + offset, least-squares fitted to the teacher on the training
  images (a pointwise colour map that any student with a learned 1x1 skip could represent);
- ``oracle affine``: the best colour matrix + offset for each evaluation image itself (an upper bound for
  anything that changes colours only, not a model: it sees the teacher's output);

and how the teacher responds to a global brightness and contrast change of its input (an InstanceNorm
after the first convolution makes a CycleGAN teacher invariant to both).

    .venv/bin/python tools/translation_ceiling.py --teacher vintage \\
        --train ../shared/data/sr/BSD68/HR --eval builtin-held-out --eval ../shared/data/sr/Set14/HR

``builtin`` / ``builtin-held-out`` / ``builtin-train`` name the built-in samples (all of them, the main
job's held-out ones, the others). Teacher outputs are cached in ``--cache``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from agd.metrics import psnr


def _images(spec: str):
    from agd.data.samples import HELD_OUT
    from agd.search import data as D

    if spec == "builtin":
        return D.load_images(None)
    if spec == "builtin-held-out":
        return D.load_images(None, only=HELD_OUT)
    if spec == "builtin-train":
        return D.load_images(None, exclude=HELD_OUT)
    return D.load_images(Path(spec))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return psnr(a, b, y_channel=False, quantize=False)  # RGB, not rounded to 8 bits


def _design(x: torch.Tensor) -> torch.Tensor:
    f = x.reshape(3, -1).double()
    return torch.cat([torch.ones_like(f[:1]), f]).T  # (pixels, 4): 1, r, g, b


def _apply(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (_design(x) @ w).T.reshape(x.shape).float().clamp(0, 1)


def _fit(items) -> torch.Tensor:
    a = torch.cat([_design(d.inp) for d in items])
    y = torch.cat([d.target.reshape(3, -1).T.double() for d in items])
    return torch.linalg.lstsq(a, y).solution


def ceiling(train, eval_sets: dict[str, list]) -> list[dict]:
    """A row per evaluation set (name -> prepared images): mean PSNR to the teacher of the identity, of the
    colour map fitted on ``train`` and of each image's own best colour map."""
    w = _fit(train)
    rows = []
    for name, items in eval_sets.items():
        n = len(items)
        rows.append({"images": name, "n": n,
                     "identity": sum(_psnr(d.inp, d.target) for d in items) / n,
                     "global_affine": sum(_psnr(_apply(w, d.inp), d.target) for d in items) / n,
                     "oracle_affine": sum(_psnr(_apply(_fit([d]), d.inp), d.target) for d in items) / n})
    return rows


def invariance(teacher, img: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Mean absolute change of the input and of the teacher's output, for a darker and a flatter input."""
    x = img[None]
    out = {}
    with torch.inference_mode():
        y = teacher(x).clamp(0, 1)
        for what, xv in (("x 0.8 (darker)", x * 0.8), ("contrast x 0.7", (x - x.mean()) * 0.7 + x.mean())):
            out[what] = (float((xv - x).abs().mean()), float((teacher(xv).clamp(0, 1) - y).abs().mean()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="vintage")
    ap.add_argument("--train", default="builtin-train", help="images the global colour map is fitted on")
    ap.add_argument("--eval", action="append", help="evaluation images (repeatable); default builtin-held-out")
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--cache", type=Path, default=Path(".cache/translation-ceiling"))
    a = ap.parse_args()

    from agd.search import data as D
    from agd.teachers import load_teacher

    teacher = load_teacher(a.teacher, device=torch.device("cpu"))
    if teacher.info.task != "translation":
        raise SystemExit(f"--teacher {a.teacher}: a {teacher.info.task} teacher; this compares translation teachers")

    def prepare(spec: str):
        return D.prepare(_images(spec), teacher, cache_dir=a.cache, max_side=a.max_side, device="cpu")

    train = prepare(a.train)
    rows = ceiling(train, {spec: prepare(spec) for spec in a.eval or ["builtin-held-out"]})
    print(f"teacher {a.teacher}; global colour map fitted on {a.train} ({len(train)} images, at most {a.max_side} px)")
    print("| images | n | identity | global affine | oracle affine (per image) |")
    print("|---|---|---|---|---|")
    for r in rows:
        i = r["identity"]
        print(f"| {r['images']} | {r['n']} | {i:.2f} | {r['global_affine']:.2f} ({r['global_affine'] - i:+.2f}) | "
              f"{r['oracle_affine']:.2f} ({r['oracle_affine'] - i:+.2f}) |")
    for what, (din, dout) in invariance(teacher, train[0].inp).items():
        print(f"invariance on {train[0].name}, input {what}: input changed by {din:.4f} mean abs, "
              f"the teacher's output by {dout:.4f}")


if __name__ == "__main__":
    main()
