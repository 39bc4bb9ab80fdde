"""Search plots (matplotlib, PNG, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agd.io import atomic_path


def _plt():
    """matplotlib's pyplot on the Agg backend (no display). Imported here, on the first plot, and nowhere else:
    only the end-of-run plots need it, and the backend must be chosen before pyplot is imported."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_search(log: list[dict[str, Any]], history: list[dict[str, Any]], budget, out: Path) -> list[Path]:
    """Probability heatmaps (operators and widths per layer over the evaluations), expected cost against
    the budget, and the loss curves."""
    plt = _plt()
    out = Path(out)
    paths = []
    evals = [h for h in history if "op_probs" in h]
    scale, unit = (1e9, "GMACs") if budget.kind == "macs" else (1.0, "ms")
    search = [r for r in log if r.get("phase") == "search"]
    if search:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot([r["step"] for r in search], [r["expected"] / scale for r in search], label="expected cost")
        ax.axhline(budget.value / scale, color="k", ls="--", label="budget")
        ax.set_xlabel("step")
        ax.set_ylabel(unit)
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in search], [r["lam"] for r in search], color="tab:red", alpha=0.5, label="λ")
        ax2.set_ylabel("λ")
        ax.legend(loc="upper right")
        ax.set_title("expected cost against the budget")
        paths.append(_save(fig, out / "cost.png"))
    if log:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for key, label in (("loss_w", "weights (distillation)"), ("loss_a", "architecture (distillation)")):
            pts = [(r["step"], r[key]) for r in log if key in r]
            if pts:
                ax.plot(*zip(*pts), label=label)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        ax.set_title("losses")
        paths.append(_save(fig, out / "loss.png"))
    for key, title in (("op_probs", "operator probabilities"), ("width_probs", "width probabilities")):
        if not evals or not evals[-1][key]:
            continue
        names = list(evals[-1][key])
        fig, axes = plt.subplots(1, len(evals), figsize=(2.2 * len(evals) + 1.5, 0.28 * len(names) + 1.6), squeeze=False)
        for ax, h in zip(axes[0], evals):
            rows = [h[key][n] for n in names]
            width = max(len(r) for r in rows)
            grid = [r + [float("nan")] * (width - len(r)) for r in rows]
            ax.imshow(grid, aspect="auto", vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"step {h['step']}", fontsize=8)
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels(names if ax is axes[0][0] else [], fontsize=6)
            ax.set_xticks(range(width))
        fig.suptitle(title)
        paths.append(_save(fig, out / f"{key}.png"))
    return paths


def plot_pareto(points: list[dict[str, Any]], out: Path, metric: str = "psnr_to_teacher") -> Path:
    """MACs against a quality metric for teacher, students and baselines: points are dicts with
    ``name``, ``macs`` and ``metric``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for p in points:
        ax.scatter(p["macs"] / 1e9, p[metric], label=p["name"])
        ax.annotate(p["name"], (p["macs"] / 1e9, p[metric]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("GMACs (log)")
    ax.set_ylabel(metric)
    ax.set_title("cost against quality")
    return _save(fig, Path(out))
