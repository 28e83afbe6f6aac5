"""The evaluation's cost–quality plot (every method's points and non-decreasing hull), the
two-model strong-share plot, and the trained predictor's reliability plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from training.metrics import nondecreasing_hull, same_cost

STYLE = {
    "router": dict(color="tab:red", marker="o"),
    "knn": dict(color="tab:blue", marker="s"),
    "zero": dict(color="tab:gray", marker=None),
    "oracle": dict(color="tab:green", marker=None),
}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _hull_line(costs, qualities, c_max):
    """The hull, densified so that its straight segments stay straight on a log axis too (and on a
    symlog one, whose linear part near a free model's cost 0 needs points of its own)."""
    hx, hy = nondecreasing_hull(costs, qualities)
    end = max(c_max, hx[-1])
    positive = hx[hx > 0]
    xs = np.union1d(hx, np.geomspace(positive[0], end, 200) if len(positive) and end > positive[0] else [end])
    if hx[0] <= 0 < end:
        xs = np.union1d(xs, np.linspace(hx[0], positive[0] if len(positive) else end, 50))
    return xs, np.interp(xs, hx, hy)


def _all_costs(summary: dict) -> np.ndarray:
    xs = [m["mean_cost"] for m in summary["single_models"].values()] + [summary["methods"]["random"]["mean_cost"]]
    for name in STYLE:
        if summary["methods"].get(name):
            xs += [p[0] for p in summary["methods"][name]["points"]]
    return np.array(xs, dtype=float)


def _cost_unit(summary: dict) -> str:
    """USD, saying so where no call's cost was recorded: prices × tokens is an estimate."""
    estimated = summary.get("cost_estimated_from_prices") or []
    if not estimated:
        return "USD"
    if len(estimated) == len(summary["models"]):
        return "USD, estimated from prices"
    return f"USD; {len(estimated)} of {_count(len(summary['models']), 'model')} estimated from prices"


def _cost_axis(ax, summary: dict, log: bool) -> None:
    """Log cost axis, or symlog where a model is free: a log axis drops cost 0 (the model's dot
    vanishes and the hull from it is drawn as a flat line at the next model's quality)."""
    label = f"mean cost per prompt ({_cost_unit(summary)})"
    if log:
        costs = _all_costs(summary)
        if (costs <= 0).any():
            linthresh = costs[costs > 0].min() if (costs > 0).any() else 1.0
            ax.set_xscale("symlog", linthresh=linthresh)
            label += f", log scale (linear below ${linthresh:.2g})"
        else:
            ax.set_xscale("log")
            _log_ticks(ax, costs)
            label += ", log scale"
    ax.set_xlabel(label)


def _log_ticks(ax, costs: np.ndarray) -> None:
    """Short labels at 1, 2, 5 × 10^k (only at 10^k over more than two decades, at every k × 10^k
    within half of one): matplotlib's own labels every minor tick as "3×10⁻⁵" where a range spans
    less than a decade, and they overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = np.log10(costs.max() / costs.min())
    subs = np.arange(1.0, 10.0) if decades < 0.5 else (1.0, 2.0, 5.0) if decades <= 2 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.1e}".replace(".0e", "e").replace("e-0", "e-")))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _marker_boxes(ax, markers) -> list:
    """The display box of each (x, y, scatter size in points²) marker, a pixel to spare."""
    from matplotlib.transforms import Bbox

    boxes = []
    for x, y, size in markers:
        cx, cy = ax.transData.transform((x, y))
        half = np.sqrt(size) / 2 * ax.figure.dpi / 72.0 + 1
        boxes.append(Bbox.from_extents(cx - half, cy - half, cx + half, cy + half))
    return boxes


def _spread_labels(ax, texts, renderer, markers=()) -> None:
    """Keep model names off each other and off every marker but their own dot (`markers`: display
    boxes): bottom-up, a name that runs into one goes to the other side of its dot, or else is
    nudged upwards until clear. Names near the right edge are right-aligned to stay in the panel."""
    to_points = 72.0 / ax.figure.dpi
    frame = ax.get_window_extent(renderer)
    for t in texts:
        if ax.transAxes.inverted().transform(ax.transData.transform(t.xy))[0] > 0.75:
            t.set_horizontalalignment("right")
            t.xyann = (-t.xyann[0], t.xyann[1])
    placed = []
    for t in sorted(texts, key=lambda t: ax.transData.transform(t.xy)[1]):
        anchor = ax.transData.transform(t.xy)
        obstacles = placed + [b for b in markers if not b.contains(*anchor)]
        (dx, dy), ha = t.xyann, t.get_horizontalalignment()
        other = "left" if ha == "right" else "right"
        # The other side of its dot, then below it, before nudging: a nudged name drifts from its
        # dot and pushes the names above it along.
        for side in ((ha, (dx, dy)), (other, (-dx, dy)), (ha, (dx, -dy - 8)), (other, (-dx, -dy - 8)), (ha, (dx, dy))):
            t.set_horizontalalignment(side[0])
            t.xyann = side[1]
            box = t.get_window_extent(renderer)
            clash = next((b for b in obstacles if box.overlaps(b)), None)
            if clash is None and frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0:
                break
        while clash is not None:
            t.xyann = (t.xyann[0], t.xyann[1] + (clash.y1 - box.y0 + 1) * to_points)
            box = t.get_window_extent(renderer)
            clash = next((b for b in obstacles if box.overlaps(b)), None)
        placed.append(box)


def _title(summary: dict, title: str) -> str:
    """The given title, or the file, its prompts and models; an in-sample evaluation says so, as a
    figure passed around without its log would otherwise read as the router's held-out quality."""
    text = title or f"{Path(summary['data']).name}: {summary['n_rows']} prompts, {_count(len(summary['models']), 'model')}"
    return text + (" — in-sample (router trained on this file)" if summary.get("in_sample") else "")


def _one_price_figure(summary: dict, title: str):
    """Every model at one price: cost cannot separate anything (AIQ is undefined), so the honest
    picture is each method's quality at that price beside the single models'."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sorted(((n, m["mean_quality"], "black") for n, m in summary["single_models"].items()), key=lambda r: r[1])
    rows += [("random", summary["methods"]["random"]["mean_quality"], "tab:orange")]
    rows += [(name, summary["methods"][name]["quality_at_random_cost"], style["color"])
             for name, style in STYLE.items() if summary["methods"].get(name)]
    fig = Figure(figsize=(8, 1.2 + 0.32 * len(rows)))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    names, values, colors = zip(*rows)
    widths = [0.0 if v is None else v for v in values]  # a method with no quality at that cost: "n/a", no bar
    ax.barh(range(len(rows)), widths, color=colors, alpha=0.8)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    for i, v in enumerate(values):
        ax.annotate("n/a" if v is None else f"{v:.3f}", (widths[i], i), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_xlim(0, max(1.0, max(widths) * 1.08))
    priced = ", estimated from prices" if summary.get("cost_estimated_from_prices") else ""
    ax.set_xlabel(f"mean quality\n(every model costs ${summary['cost_range'][0]:.3g} per prompt{priced}: quality only, no AIQ)",
                  fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.suptitle(_title(summary, title))
    fig.tight_layout()
    return fig


def cost_quality_figure(summary: dict, title: str = ""):
    """Two panels (linear and log cost) of the curves in an evaluation summary.

    A bare `Figure` (no pyplot): no global backend to switch, so the same code saves PNGs in a
    headless job and shows inline in a notebook (`display(fig)`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c_min, c_max = summary["cost_range"]
    if c_max <= c_min or same_cost(c_min, c_max):
        return _one_price_figure(summary, title)
    fig = Figure(figsize=(13, 5.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    labels = {ax: [] for ax in axes}
    rnd = summary["methods"]["random"]
    markers = [(m["mean_cost"], m["mean_quality"], 18) for m in summary["single_models"].values()]
    markers.append((rnd["mean_cost"], rnd["mean_quality"], 60))
    points = []  # each method's dots, one legend entry for all of them
    for ax, log in zip(axes, (False, True)):
        for name, m in summary["single_models"].items():
            ax.scatter(m["mean_cost"], m["mean_quality"], color="black", s=18, zorder=3, label="single model")
            labels[ax].append(ax.annotate(name, (m["mean_cost"], m["mean_quality"]), fontsize=7, xytext=(3, 3),
                                          textcoords="offset points"))
        ax.scatter(rnd["mean_cost"], rnd["mean_quality"], color="tab:orange", marker="x", s=60, label="random", zorder=3)
        for name, style in STYLE.items():
            method = summary["methods"].get(name)
            if not method:
                continue
            pts = np.array(method["points"])
            hx, hy = _hull_line(pts[:, 0], pts[:, 1], c_max)
            # The line is not the points joined up: it is their hull, what AIQ integrates.
            label = f"{name} hull" + ("" if method["aiq"] is None else f" (AIQ {method['aiq']:.3f})")
            ax.plot(hx, hy, color=style["color"], lw=1.6, label=label)
            if style["marker"]:
                dots = ax.scatter(pts[:, 0], pts[:, 1], color=style["color"], marker=style["marker"], s=10, alpha=0.5)
                if not log:
                    points.append(dots)
        _cost_axis(ax, summary, log)
        ax.set_ylabel("mean quality")
        ax.grid(alpha=0.3)
    # Outside the panels: inside, wherever it goes, it hides some model's dot and name.
    from matplotlib.legend_handler import HandlerTuple

    handles, names = axes[0].get_legend_handles_labels()
    unique = dict(zip(names, handles))
    entries = list(unique.items())
    if points:
        entries.insert(list(unique).index("random") + 1, ("operating points (one per setting)", tuple(points)))
    fig.legend([h for _, h in entries], [n for n, _ in entries], loc="lower center", ncol=len(entries), fontsize=8,
               frameon=False, handler_map={tuple: HandlerTuple(ndivide=None)})
    fig.suptitle(_title(summary, title))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    renderer = fig.canvas.get_renderer()
    for ax in axes:
        _spread_labels(ax, labels[ax], renderer, _marker_boxes(ax, markers))
    return fig


def strong_share_figure(summary: dict, methods=("router", "knn", "oracle")):
    """RouteLLM's view of a two-model pool: mean quality against the share of calls to the strong
    model, with the all-weak and all-strong settings at both ends."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tm = summary["two_model"]
    if "note" in tm:
        raise ValueError(f"no strong-share plot: {tm['note']}")
    strong = summary["single_models"][tm["strong"]]["mean_quality"]
    weak = summary["single_models"][tm["weak"]]["mean_quality"]
    fig = Figure(figsize=(6.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name in methods:
        if name not in tm or not summary["methods"].get(name):
            continue
        pts = np.array(summary["methods"][name]["points"])
        share = np.array(tm[name]["strong_share"])
        q = np.concatenate(([weak], pts[:, 1], [strong]))
        order = np.argsort(share, kind="stable")
        ax.plot(share[order] * 100, q[order], marker=".", color=STYLE[name]["color"],
                label=f"{name} (APGR {tm[name]['apgr']:.2f})")
    ax.plot([0, 100], [weak, strong], color="tab:orange", ls="--", label="random mixing (APGR 0.50)")
    ax.set_xlabel("calls to the strong model (%)")
    ax.set_ylabel("mean quality")
    ax.set_title(f"strong {tm['strong']} / weak {tm['weak']}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_cost_quality_plot(summary: dict, path: str | Path, title: str = "") -> Path:
    cost_quality_figure(summary, title).savefig(path, dpi=110)
    return Path(path)


def reliability_figure(metrics: dict):
    """Observed against predicted P(good), pooled over models, out of fold. Each bin's dot has an
    area in proportion to its rows: drawn alike, a bin of 40 rows looked as telling as one of
    7,500. The title gives the numbers a curve can hide (a router can look calibrated while
    ranking no better than chance): AUC, Brier beside the base rate's, ECE."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curve = metrics["reliability"]
    n = np.array([c["n"] for c in curve], dtype=float)
    fig = Figure(figsize=(4.8, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect")
    x, y = [c["predicted"] for c in curve], [c["observed"] for c in curve]
    ax.plot(x, y, lw=1, c="tab:blue")
    ax.scatter(x, y, s=12 + 400 * n / n.max(), c="tab:blue", alpha=0.7, zorder=3, label="router (out-of-fold; area ∝ rows)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted P(good)")
    ax.set_ylabel("observed share good")
    auc = metrics.get("mean_auc")
    ax.set_title(f"Reliability, pooled over models ({int(n.sum()):,} predictions)\n"
                 f"mean AUC {'n/a' if auc is None else f'{auc:.3f}'} · Brier {metrics['brier']:.4f} "
                 f"(base rate {metrics['brier_base_rate']:.4f}) · ECE {metrics['ece']:.3f}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def save_reliability_plot(metrics: dict, path: str | Path) -> Path:
    reliability_figure(metrics).savefig(path, dpi=100)
    return Path(path)
