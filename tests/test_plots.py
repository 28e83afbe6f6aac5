"""The evaluation plots say what the summary says: nothing hidden, nothing drawn where it is not."""
from __future__ import annotations

import numpy as np

from training.plots import cost_quality_figure, strong_share_figure


def _renderer(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return FigureCanvasAgg(fig).get_renderer()


def _method(points, aiq=0.7):
    return {"points": [[c, q, 0.0] for c, q in points], "aiq": aiq, "quality_at_random_cost": max(q for _, q in points)}


def _summary(costs: dict[str, float], qualities: dict[str, float]) -> dict:
    singles = {m: {"mean_cost": costs[m], "mean_quality": qualities[m]} for m in costs}
    by_cost = sorted(costs, key=costs.get)
    line = [(costs[m], qualities[m]) for m in by_cost]
    lo, hi = min(costs.values()), max(costs.values())
    return {
        "data": "t.parquet", "n_rows": 40, "models": list(costs), "cost_range": [lo, hi], "single_models": singles,
        "methods": {
            "random": {"mean_cost": float(np.mean(list(costs.values()))),
                       "mean_quality": float(np.mean(list(qualities.values()))), "quality_at_random_cost": 0.6},
            "router": _method(line), "zero": _method(line), "oracle": _method([(lo, 0.8), (hi, 0.95)]),
        },
    }


# Two models at almost the same point (as llama-2-70b-chat and code-llama-instruct-34b-chat on
# RouterBench), one far right, one free (a local model).
COSTS = {"local": 0.0, "llama-2-70b-chat": 0.00031, "code-llama-instruct-34b-chat": 0.00032, "big": 0.005}
QUALITY = {"local": 0.5, "llama-2-70b-chat": 0.611, "code-llama-instruct-34b-chat": 0.614, "big": 0.88}


def test_legend_sits_outside_both_panels():
    fig = cost_quality_figure(_summary(COSTS, QUALITY))
    renderer = _renderer(fig)
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    assert "single model" in [t.get_text() for t in legend.get_texts()]


def test_model_names_do_not_overlap_and_stay_in_the_figure():
    fig = cost_quality_figure(_summary(COSTS, QUALITY))
    renderer = _renderer(fig)
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert len(boxes) == len(COSTS)
        assert not [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
        assert all(b.x1 <= ax.get_window_extent(renderer).x1 + 1 for b in boxes)


def test_a_free_model_keeps_its_dot_and_hull_on_the_log_panel():
    fig = cost_quality_figure(_summary(COSTS, QUALITY))
    log = fig.axes[1]
    assert log.get_xscale() == "symlog"  # a log axis drops cost 0
    dots = np.vstack([c.get_offsets() for c in log.collections if len(c.get_offsets()) == 1])
    assert [0.0, 0.5] in dots.tolist()
    zero = next(line for line in log.get_lines() if line.get_label().startswith("zero"))
    x, y = zero.get_data()
    assert x[0] == 0.0 and y[0] == 0.5
    # Straight from the free model up to the next one, not a flat line at the next one's quality.
    mid = np.searchsorted(x, 0.000155)
    assert 0.5 < y[mid] < 0.61


def test_one_price_for_all_models_shows_quality_bars():
    same = {m: 0.001 for m in COSTS}
    s = _summary(same, QUALITY)
    for name in ("router", "zero", "oracle"):
        s["methods"][name]["aiq"] = None
    fig = cost_quality_figure(s)
    (ax,) = fig.axes
    widths = {t.get_text(): p.get_width() for t, p in zip(ax.get_yticklabels(), ax.patches)}
    assert widths["oracle"] == s["methods"]["oracle"]["quality_at_random_cost"]
    assert widths["big"] == 0.88 and widths["random"] == s["methods"]["random"]["mean_quality"]
    assert "no AIQ" in ax.get_xlabel()


def test_one_price_figure_shows_a_method_without_a_quality_and_keeps_its_axis_label_inside():
    s = _summary({m: 0.001 for m in COSTS}, QUALITY)
    s["data"] = "a_sealed_file_with_a_long_name_routerdc_7llm_test.parquet"
    s["cost_estimated_from_prices"] = list(COSTS)
    s["methods"]["router"]["quality_at_random_cost"] = None
    fig = cost_quality_figure(s)
    (ax,) = fig.axes
    widths = {t.get_text(): p.get_width() for t, p in zip(ax.get_yticklabels(), ax.patches)}
    assert widths["router"] == 0.0 and "n/a" in [t.get_text() for t in ax.texts]
    renderer = _renderer(fig)
    fig.draw(renderer)  # the label is placed below the tick labels at drawing time
    label, page = ax.xaxis.label.get_window_extent(renderer), fig.bbox
    assert label.x0 >= page.x0 and label.x1 <= page.x1 and label.y0 >= page.y0


def test_log_axis_tick_labels_do_not_overlap():
    # The nim9 pool: every model between $2.8e-5 and $2.5e-4, less than a decade.
    costs = {"gemma": 2.8e-5, "llama-8b": 5.6e-5, "qwen": 5.7e-5, "nemotron": 2.5e-4}
    quality = {"gemma": 0.53, "llama-8b": 0.56, "qwen": 0.52, "nemotron": 0.62}
    fig = cost_quality_figure(_summary(costs, quality))
    renderer = _renderer(fig)
    fig.draw(renderer)
    log = fig.axes[1]
    assert log.get_xscale() == "log"
    lo, hi = log.get_xlim()
    ticks = [t for t in log.get_xticklabels(minor=False) + log.get_xticklabels(minor=True)
             if t.get_text() and lo <= t.get_position()[0] <= hi]
    assert len(ticks) >= 3
    boxes = sorted((t.get_window_extent(renderer) for t in ticks), key=lambda b: b.x0)
    # Apart by at least a character's width: matplotlib's own "3×10⁻⁵" "4×10⁻⁵" all but touched (6 px).
    assert all(b.x0 - a.x1 >= 12 for a, b in zip(boxes, boxes[1:]))


def test_strong_share_figure_keeps_its_labels_inside():
    s = _summary({"weak": 0.0001, "strong": 0.003}, {"weak": 0.6, "strong": 0.85})
    s["two_model"] = {"strong": "strong", "weak": "weak",
                      "router": {"apgr": 0.55, "strong_share": [0.0, 0.0, 1.0, 1.0]}}
    fig = strong_share_figure(s, methods=("router",))
    renderer = _renderer(fig)
    ax = fig.axes[0]
    page = fig.bbox
    for label in (ax.xaxis.label, ax.yaxis.label, ax.title):
        box = label.get_window_extent(renderer)
        assert box.x0 >= page.x0 and box.y0 >= page.y0 and box.x1 <= page.x1 and box.y1 <= page.y1
    assert ax.get_lines()[0].get_label() == "router (APGR 0.55)"


def test_cost_axis_says_when_costs_are_estimated_from_prices():
    s = _summary(COSTS, QUALITY)
    assert all(ax.get_xlabel().startswith("mean cost per prompt (USD)") for ax in cost_quality_figure(s).axes)
    s["cost_estimated_from_prices"] = ["big"]
    assert all("1 of 4 models estimated from prices" in ax.get_xlabel() for ax in cost_quality_figure(s).axes)
    s["cost_estimated_from_prices"] = list(COSTS)
    assert all("USD, estimated from prices" in ax.get_xlabel() for ax in cost_quality_figure(s).axes)


def test_reliability_dots_weigh_their_rows_and_the_title_gives_what_a_curve_hides():
    from training.plots import reliability_figure

    curve = [{"bin": 0, "predicted": 0.05, "observed": 0.4, "n": 40},
             {"bin": 5, "predicted": 0.55, "observed": 0.56, "n": 7500},
             {"bin": 9, "predicted": 0.93, "observed": 0.91, "n": 900}]
    fig = reliability_figure({"reliability": curve, "mean_auc": 0.49, "brier": 0.1707, "brier_base_rate": 0.1682,
                              "ece": 0.02})
    ax = fig.axes[0]
    sizes = next(c for c in ax.collections if len(c.get_offsets()) == 3).get_sizes()
    assert sizes[1] > 10 * sizes[0] and sizes[1] > sizes[2] > sizes[0]  # a 40-row bin is not drawn like 7,500
    title = ax.get_title()
    assert "AUC 0.490" in title and "Brier 0.1707 (base rate 0.1682)" in title and "8,440 predictions" in title


def test_the_legend_says_the_lines_are_hulls_and_names_the_dots():
    fig = cost_quality_figure(_summary(COSTS, QUALITY))
    (legend,) = fig.legends
    entries = [t.get_text() for t in legend.get_texts()]
    # A line is the non-decreasing hull of its method's points, not the points joined up.
    assert "router hull (AIQ 0.700)" in entries and "oracle hull (AIQ 0.700)" in entries
    assert not [e for e in entries if e.startswith("router (")]
    points = [e for e in entries if e.startswith("operating points")]
    assert len(points) == 1
    assert entries.index(points[0]) == entries.index("random") + 1


def _overlaps_a_marker(fig, summary) -> list:
    renderer = _renderer(fig)
    rnd = summary["methods"]["random"]
    markers = {"random": (rnd["mean_cost"], rnd["mean_quality"])}
    markers.update({m: (v["mean_cost"], v["mean_quality"]) for m, v in summary["single_models"].items()})
    clashes = []
    for ax in fig.axes:
        for t in ax.texts:
            box = t.get_window_extent(renderer)
            for name, xy in markers.items():
                if name != t.get_text() and box.contains(*ax.transData.transform(xy)):
                    clashes.append((ax.get_xscale(), t.get_text(), name))
    return clashes


def test_model_names_keep_off_the_random_marker_and_other_dots():
    s = _summary(COSTS, QUALITY)
    fig = cost_quality_figure(s)
    # Random's marker put in the middle of a model's name, as random's mean cost and quality may fall.
    ax = fig.axes[0]
    label = next(t for t in ax.texts if t.get_text() == "code-llama-instruct-34b-chat")
    box = label.get_window_extent(_renderer(fig))
    cost, quality = ax.transData.inverted().transform(((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2))
    s["methods"]["random"].update(mean_cost=float(cost), mean_quality=float(quality))
    fig = cost_quality_figure(s)
    assert fig.axes[0].get_xlim() == ax.get_xlim()  # the marker is where the name was
    assert _overlaps_a_marker(fig, s) == []


def test_an_in_sample_evaluation_says_so_in_the_title():
    # `eval` on the router's own training file: a curve that would pass for held-out quality.
    s = _summary(COSTS, QUALITY)
    assert "in-sample" not in cost_quality_figure(s).get_suptitle()
    s["in_sample"] = True
    suffix = " — in-sample (router trained on this file)"
    assert cost_quality_figure(s).get_suptitle() == "t.parquet: 40 prompts, 4 models" + suffix
    assert cost_quality_figure(s, title="mine").get_suptitle() == "mine" + suffix
    flat = _summary({m: 0.001 for m in COSTS}, QUALITY)
    flat["in_sample"] = True
    assert cost_quality_figure(flat).get_suptitle().endswith(suffix)
