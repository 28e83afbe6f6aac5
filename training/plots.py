"""Cost–quality plot of an evaluation: every method's points and non-decreasing hull."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from training.metrics import nondecreasing_hull

STYLE = {
    "router": dict(color="tab:red", marker="o"),
    "knn": dict(color="tab:blue", marker="s"),
    "zero": dict(color="tab:gray", marker=None),
    "oracle": dict(color="tab:green", marker=None),
}


def _hull_line(costs, qualities, c_max):
    """The hull, densified so that its straight segments stay straight on a log axis too."""
    hx, hy = nondecreasing_hull(costs, qualities)
    end = max(c_max, hx[-1])
    xs = np.union1d(hx, np.geomspace(hx[0], end, 200)) if hx[0] > 0 else np.union1d(hx, [end])
    return xs, np.interp(xs, hx, hy)


def cost_quality_figure(summary: dict, title: str = ""):
    """Two panels (linear and log cost) of the curves in an evaluation summary.

    A bare `Figure` (no pyplot): no global backend to switch, so the same code saves PNGs in a
    headless job and shows inline in a notebook (`display(fig)`).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5.2))
    axes = fig.subplots(1, 2)
    c_max = summary["cost_range"][1]
    for ax, log in zip(axes, (False, True)):
        for name, m in summary["single_models"].items():
            ax.scatter(m["mean_cost"], m["mean_quality"], color="black", s=18, zorder=3)
            ax.annotate(name, (m["mean_cost"], m["mean_quality"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        rnd = summary["methods"]["random"]
        ax.scatter(rnd["mean_cost"], rnd["mean_quality"], color="tab:orange", marker="x", s=60, label="random", zorder=3)
        for name, style in STYLE.items():
            method = summary["methods"].get(name)
            if not method:
                continue
            pts = np.array(method["points"])
            hx, hy = _hull_line(pts[:, 0], pts[:, 1], c_max)
            label = name if method["aiq"] is None else f"{name} (AIQ {method['aiq']:.3f})"  # None: one price for all
            ax.plot(hx, hy, color=style["color"], lw=1.6, label=label)
            if style["marker"]:
                ax.scatter(pts[:, 0], pts[:, 1], color=style["color"], marker=style["marker"], s=10, alpha=0.5)
        ax.set_xlabel("mean cost per prompt (USD)" + (", log scale" if log else ""))
        ax.set_ylabel("mean quality")
        if log:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title or f"{Path(summary['data']).name}: {summary['n_rows']} prompts, {len(summary['models'])} models")
    fig.tight_layout()
    return fig


def save_cost_quality_plot(summary: dict, path: str | Path, title: str = "") -> Path:
    cost_quality_figure(summary, title).savefig(path, dpi=110)
    return Path(path)
