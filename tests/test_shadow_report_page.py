"""What the shadow report's page says beside its numbers: both of retrain's comparisons, marked where
they decide the verdict; the utility's formula and willingness to pay; the served levels beside the
deltas; the interval of the share the log never shows; an agreement plot that fits its tasks."""
from __future__ import annotations

import numpy as np
import pytest

from tests.test_shadow import _synthetic_shadows


def _estimate(value: float, lo: float, hi: float, n: int = 240) -> dict:
    return {"value": value, "lo": lo, "hi": hi, "n": n, "ess": 110.0}


def _support(verdict: str = "supported", mean: float = 0.89, lo: float = 0.77, hi: float = 1.01, known: float = 0.07) -> dict:
    return {"weight_mean": _estimate(mean, lo, hi), "overlap": 0.6, "unsupported_known": known,
            "unsupported_at_least": known, "verdict": verdict, "ok": verdict == "supported",
            "summary": f"mean importance weight {mean:.2f}"}


def _comparison(utility_dr: tuple[float, float, float], level: float, support: dict, agreement: float = 0.6) -> dict:
    """One comparison as `compare_policies` returns it: every estimator's utility difference `utility_dr`."""
    diff = {est: _estimate(*utility_dr) for est in ("ips", "snips", "dr")}
    live = {est: _estimate(level, level - 0.05, level + 0.05) for est in ("ips", "snips", "dr")}
    return {"n": 240, "agreement": agreement, "overlap": 0.6, "support": support,
            **{m: {"difference": diff, "live": live} for m in ("utility", "quality", "cost_usd")},
            "logged": {"utility": 0.7378, "quality": 0.7764, "cost_usd": 0.0004}}


def _report(vs_served: tuple, vs_live: tuple, support: dict | None = None) -> dict:
    from training import shadow_report

    report = shadow_report.summarize(_synthetic_shadows(40), {}, {})
    report["ope"] = _comparison(vs_served, 0.7378, support or _support())
    report["ope_vs_live_router"] = _comparison(vs_live, 0.8006, support or _support())
    report["verdict"] = shadow_report.verdict(report)
    return report


def _sections(page: str) -> dict[str, str]:
    """Each comparison's part of the page, from its heading to the next."""
    served = page.index("<h3>Against what the gateway served")
    live = page.index("<h3>Against the live router")
    return {"vs_served": page[served:live], "vs_live_router": page[live:page.index("<h2>", live)]}


def _ope_figures(monkeypatch, report: dict) -> dict[str, object]:
    from training import shadow_report

    figures = []
    monkeypatch.setattr(shadow_report, "_png", lambda fig: figures.append(fig) or "")
    shadow_report.plots(report, _synthetic_shadows(40))
    return {f._suptitle.get_text(): f for f in figures if f._suptitle is not None}


def _decides_ticks(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.get_xticklabels() if "decides" in t.get_text()]


@pytest.mark.parametrize("served, live, promote, decide", [
    ((0.065, 0.017, 0.114), (0.003, -0.05, 0.055), False, ["vs_live_router"]),  # the review's sr1: the live router's comparison fails
    ((0.065, 0.017, 0.114), (0.04, 0.01, 0.07), True, ["vs_served", "vs_live_router"]),  # both pass: both decide
])
def test_the_page_shows_both_comparisons_and_marks_those_that_decide(monkeypatch, served, live, promote, decide):
    """The page plotted and tabulated only the comparison against what was served, and marked its DR
    "decides" where the verdict was the other comparison's failure."""
    from training.shadow_report import render_html

    report = _report(served, live)
    assert report["verdict"]["promote"] is promote
    sections = _sections(render_html(report, {"ope": "A", "ope_vs_live_router": "B"}))
    for key, part in sections.items():
        assert ('<td class="mark">decides</td>' in part) is (key in decide)
        assert ("(decides the verdict)</h3>" in part) is (key in decide)
    assert 'src="data:image/png;base64,A"' in sections["vs_served"] and "<th>shadow − served</th>" in sections["vs_served"]
    assert 'src="data:image/png;base64,B"' in sections["vs_live_router"]
    assert "<th>shadow − live router</th>" in sections["vs_live_router"]
    figures = _ope_figures(monkeypatch, report)
    titles = {"vs_served": "what the gateway served", "vs_live_router": "the live router's own choices"}
    for key, baseline in titles.items():
        (fig,) = [f for t, f in figures.items() if t.startswith(f"Shadow router − {baseline}")]
        assert _decides_ticks(fig) == (["DR\n(decides)"] if key in decide else [])


def test_no_estimate_decides_where_the_log_does_not_support_the_shadow_router(monkeypatch):
    """The support paragraph says "none decides": the table and the plot marked DR all the same."""
    from training.shadow_report import render_html

    report = _report((0.42, 0.35, 0.49), (0.42, 0.35, 0.49), _support("unsupported", 0.37, 0.30, 0.43, 0.63))
    assert report["verdict"]["reason"].startswith("the log does not support")
    page = render_html(report, {})
    assert "and none decides" in page
    assert "decides</td>" not in page and "(decides the verdict)" not in page
    assert not any(_decides_ticks(f) for f in _ope_figures(monkeypatch, report).values())


def test_a_log_that_supports_neither_comparison_is_said_so_once_in_the_verdict():
    """Each comparison's reason repeats the support check's ~70 words: the box said them twice."""
    from training.shadow_report import render_html

    support = _support("unsupported", 0.37, 0.30, 0.43, 0.63)
    report = _report((0.42, 0.35, 0.49), (0.31, 0.22, 0.40), support)
    assert all(support["summary"] in e["reason"] for e in report["verdict"]["each"].values())
    page = render_html(report, {})
    box = page[page.index('<div class="verdict'):page.index("</div>")]
    assert box.count(support["summary"]) == 1 and box.count("<li>") == 1
    assert "<li><b>Failed</b> both comparisons: the log does not support" in box
    assert "+0.4200" in box and "+0.3100" in box  # each comparison's estimate, in the one reason


def _traffic(request_ids: list[str], wtp: np.ndarray):
    """Logged traffic on two models: the live gateway serves m1 with probability 0.8, m2 otherwise."""
    from training.offpolicy import Traffic

    n, rng = len(request_ids), np.random.default_rng(0)
    action = (rng.random(n) < 0.2).astype(int)
    return Traffic(request_ids, [f"prompt {i}" for i in range(n)], np.full(n, 50), np.zeros((n, 384)), np.zeros((n, 1)),
                   ["m1", "m2"], np.ones((n, 2), bool), np.full((n, 2), 0.7), np.zeros((n, 2)), action,
                   np.where(action == 0, 0.8, 0.2), rng.integers(0, 2, n).astype(float), np.full(n, 0.002), wtp,
                   np.arange(n, dtype=float), [None] * n, np.full(n, np.nan), np.full(n, np.nan))


def test_utility_is_given_with_its_formula_and_willingness_to_pay_and_deltas_with_served_levels():
    from training.shadow_report import render_html, summarize

    shadows = _synthetic_shadows(40)
    outcomes = {r["request_id"]: {"cost_usd": 0.0004, "latency_s": 1.25} for r in shadows}
    report = summarize(shadows, outcomes, {}, _traffic([r["request_id"] for r in shadows], np.full(40, 0.01)))
    assert report["ope"]["wtp_usd"] == {"min": 0.01, "max": 0.01, "mean": 0.01}  # in the JSON too
    page = render_html(report, {})
    assert "utility = P(good) − cost / WTP (WTP $0.010 per quality point" in page
    served = _sections(page)["vs_served"]
    assert "<th>served level (observed)</th>" in served
    assert f"<td>{report['ope']['logged']['utility']:.4f}</td>" in served  # the served policy's own utility
    assert "<th>live router level (estimated)</th>" in _sections(page)["vs_live_router"]
    assert "per 1,000 requests; served $0.40</small>" in page and "per request; served 1.250 s</small>" in page
    assert f"served P(good) {report['ope']['logged']['quality']:.4g}</small>" in page

    varied = summarize(shadows, outcomes, {}, _traffic([r["request_id"] for r in shadows], np.repeat([0.01, 0.0005], 20)))
    assert "(WTP $0.00050 to $0.010 by request (mean $0.0053) per quality point" in render_html(varied, {})


def test_the_share_the_log_never_shows_comes_with_its_interval_and_the_share_known():
    """1 − the mean importance weight, on a few hundred requests, was a bare percentage."""
    from training.shadow_report import render_html

    report = _report((0.065, 0.017, 0.114), (0.003, -0.05, 0.055), _support("supported", 0.89, 0.77, 1.01, 0.07))
    page = render_html(report, {})
    assert ("choices the log never shows<b>11.0%</b><small>95 % interval 0.0% .. 23.0%; 7.0% for certain; "
            "support: supported</small>") in page
    report = _report((0.42, 0.35, 0.49), (0.42, 0.35, 0.49), _support("unsupported", 0.37, 0.30, 0.43, 0.63))
    assert "About 63.0% (95 % interval 57.0% .. 70.0%) of them are choices" in render_html(report, {})
    # The choices the log does make weigh more than 1: the point is not said below the known share.
    report = _report((0.42, 0.35, 0.49), (0.42, 0.35, 0.49), _support("unsupported", 0.41, 0.30, 0.52, 0.60))
    assert "About 60.0% (95 % interval 48.0% .. 70.0%) of them are choices" in render_html(report, {})


def _agreement_figure(monkeypatch, tasks: int):
    """The report and its agreement plot for "Big" (10 requests, the most) and `tasks` tasks of 2 requests."""
    from training import shadow_report

    figures = []
    monkeypatch.setattr(shadow_report, "_png", lambda fig: figures.append(fig) or "")
    shadows = _synthetic_shadows(10 + 2 * tasks)
    labels = {r["request_id"]: "Big" if i < 10 else f"task-{i % tasks:02d}" for i, r in enumerate(shadows)}
    report = shadow_report.summarize(shadows, {}, labels)
    shadow_report.plots(report, shadows)
    (fig,) = [f for f in figures if f.axes[0].get_title().startswith("Agreement by task")]
    return report, fig


def test_the_agreement_plot_grows_with_its_tasks_and_lists_them_as_the_table_does(monkeypatch):
    from training.shadow_report import render_html

    most_bars = 40  # training.shadow_report.MAX_TASK_BARS
    report, few = _agreement_figure(monkeypatch, 3)
    _, many = _agreement_figure(monkeypatch, 30)
    assert many.get_size_inches()[1] > 2.5 * few.get_size_inches()[1]  # a bar's room stays; 30 overprinted in 3 in
    ax = few.axes[0]
    assert ax.yaxis_inverted()  # top down, as the table below
    assert [t.get_text().rsplit(" (", 1)[0] for t in ax.get_yticklabels()] == list(report["by_task"]) == [
        "Big", "task-00", "task-01", "task-02"]  # case-insensitive too

    report, most = _agreement_figure(monkeypatch, most_bars + 10)
    drawn = [t.get_text().rsplit(" (", 1)[0] for t in most.axes[0].get_yticklabels()]
    assert len(drawn) == most_bars and "Big" in drawn and drawn == [t for t in report["by_task"] if t in drawn]
    assert f"The plot draws the {most_bars} tasks with most requests of {most_bars + 11}" in render_html(report, {})


def test_models_sort_case_insensitively_and_predicted_columns_say_so(monkeypatch):
    from training import shadow_report

    shadows = _synthetic_shadows(30)
    for r, model in zip(shadows, ["WizardLM-13B", "claude-v1", "gpt-4"] * 10):
        r["live_model"] = model
    report = shadow_report.summarize(shadows, {}, {})
    assert list(report["by_live_model"]) == ["claude-v1", "gpt-4", "WizardLM-13B"]
    figures = []
    monkeypatch.setattr(shadow_report, "_png", lambda fig: figures.append(fig) or "")
    shadow_report.plots(report, shadows)
    (traffic,) = [f for f in figures if f.axes[0].get_title() == "Which model each router picks"]
    assert [t.get_text() for t in traffic.axes[0].get_xticklabels()] == ["claude-v1", "gpt-4", "m1", "m2", "WizardLM-13B"]
    page = shadow_report.render_html(report, {})
    by_model = page[page.index("<h2>By live model</h2>"):]
    assert by_model.index("<td>claude-v1</td>") < by_model.index("<td>gpt-4</td>") < by_model.index("<td>WizardLM-13B</td>")
    assert "<th>Δ predicted P(good)</th><th>Δ predicted $ per 1k requests</th><th>Δ predicted latency s</th>" in page
    assert "<th>Δ P(good)</th>" not in page
    assert "Quality differences are off-policy estimates or predictions, never observed" in page
    assert "Cost and latency are observed on the shadow calls made" in page
