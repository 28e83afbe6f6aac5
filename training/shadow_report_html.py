"""The shadow report as one self-contained HTML page (`training.shadow_report`): the verdict first,
then whether the log can judge the shadow router at all, then the numbers behind it. Numbers are
written for a person: money in $ (per-request means per 1,000 requests, where they are fractions of
a cent), shares as %, times in seconds with millisecond precision."""
from __future__ import annotations

import html
import math

ESTIMATORS = ("ips", "snips", "dr")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def _fmt(v) -> str:
    if _missing(v):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _pct(v) -> str:
    return "–" if _missing(v) else f"{v:.1%}"


def _signed(v) -> str:
    """A P(good) or utility difference, in the 4 decimals `retrain` prints."""
    return "–" if _missing(v) else f"{v:+.4f}"


def usd(v, signed: bool = False) -> str:
    """Dollars to two significant digits below $1, cents above: $0.0084, $12.30."""
    if _missing(v):
        return "–"
    a = abs(v)
    if a == 0:
        body = "0"
    elif a >= 100:
        body = f"{a:,.0f}"
    elif a >= 1:
        body = f"{a:,.2f}"
    else:
        body = f"{a:.{min(10, 1 - math.floor(math.log10(a)))}f}"
    return ("-" if v < 0 else "+" if signed and v > 0 else "") + "$" + body


def usd_per_1k(v, signed: bool = True) -> str:
    """A mean per request (or call) as dollars per 1,000: -$0.0083, not -8.261e-06."""
    return "–" if _missing(v) else usd(v * 1000, signed)


def seconds(v, signed: bool = False) -> str:
    """To the millisecond; 0.000 for less, not -0.000."""
    return "–" if _missing(v) else f"{0.0 if abs(v) < 5e-4 else v:{'+' if signed and abs(v) >= 5e-4 else ''}.3f}"


FORMATS = {
    "agreement": _pct, "agreement_served": _pct, "predicted_delta_p_good": _signed, "predictor_gap_p_good": _signed,
    "predicted_delta_cost_usd": usd_per_1k, "predictor_gap_cost_usd": usd_per_1k, "delta_cost_usd": usd_per_1k,
    "predicted_delta_latency_s": lambda v: seconds(v, True), "predictor_gap_latency_s": lambda v: seconds(v, True),
    "delta_latency_s": lambda v: seconds(v, True), "live_gateway_time_s": seconds,
    "spend_usd": usd, "skipped_reserved_usd_max": usd,
}
HEADERS = {"agreement": "agreement with the live router", "agreement_served": "agreement with served",
           "predicted_delta_p_good": "Δ predicted P(good)", "predicted_delta_cost_usd": "Δ predicted $ per 1k requests",
           "predicted_delta_latency_s": "Δ predicted latency s", "predictor_gap_p_good": "P(good) gap",
           "predictor_gap_cost_usd": "$ gap per 1k requests", "predictor_gap_latency_s": "latency s gap",
           "drawn": "drawn", "calls": "made", "ok": "answered", "skipped_by_cap": "skipped by the cap",
           "skipped_reserved_usd_max": "largest skipped reservation", "spend_usd": "spend",
           "delta_cost_usd": "Δ cost $ per 1k calls", "delta_latency_s": "Δ upstream latency s",
           "latency_compared": "n timed", "live_gateway_time_s": "live gateway time s", "served": "served",
           "shadow_choices": "shadow's choices"}


def _cell(col: str, v) -> str:
    if col in ("served", "shadow_choices"):
        return '<td class="list">' + "<br>".join(html.escape(f"{m} {n}") for m, n in sorted(v.items(), key=lambda kv: -kv[1])) + "</td>"
    if col == "" and v:
        return f'<td class="mark">{html.escape(v)}</td>'
    return f"<td>{FORMATS.get(col, _fmt)(v)}</td>"


def _table(rows: dict[str, dict], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(HEADERS.get(c, c))}</th>" for c in ["", *cols])
    body = "".join(f"<tr><td>{html.escape(k)}</td>" + "".join(_cell(c, v.get(c)) for c in cols) + "</tr>"
                   for k, v in rows.items())
    return f"<table><tr>{head}</tr>{body}</table>"


BASELINES = (("vs_served", "against what the gateway served"), ("vs_live_router", "against the live router's own choices"))


def _verdict(report: dict, v: dict) -> str:
    """The verdict in one line, then retrain's reason for each of its two comparisons."""
    from training.shadow_report import headline

    if v["reason"] is None:
        lead, _, rest = html.escape(headline(v)).partition(": ")
        return f'<div class="verdict none"><b>{lead}</b>: {rest}</div>'
    kind, lead = ("switch", "Switch to the shadow router") if v["promote"] else ("keep", "Keep the live router")
    would = ("would promote it; <code>POST /admin/router/reload</code> with its artifact switches the gateway to it"
             if v["promote"] else "would not promote the shadow router")
    each = [(label, v["each"][key]) for key, label in BASELINES]
    if each[0][1]["reason"] == each[1][1]["reason"]:
        each = [("both comparisons", each[0][1])]
    elif _both_refused_by_support(report, [e for _, e in each]):
        # Each reason repeats the support check's words; retrain's verdict says them once, with both estimates.
        each = [("both comparisons", {"passed": False, "reason": v["reason"]})]
    items = "".join(f"<li><b>{'Passed' if e['passed'] else 'Failed'}</b> {html.escape(label)}: {html.escape(e['reason'])}</li>"
                    for label, e in each)
    how = (f'<p class="how">Judged by the rule <code>openclaw-router retrain</code> promotes a candidate on, with its defaults '
           f"(<code>--estimator {html.escape(v['estimator'])} --min-requests {v['min_requests']}</code>): the candidate is the "
           f"shadow router, its held-out requests the {report['ope']['n']} logged requests with feedback it decided on. "
           "Both comparisons are shown below, each against its own baseline; <i>decides</i> marks the estimate the "
           "verdict turned on.</p>")
    return f'<div class="verdict {kind}"><b>{lead}</b>: <code>openclaw-router retrain</code> {would}.<ul>{items}</ul></div>{how}'


def _both_refused_by_support(report: dict, each: list[dict]) -> bool:
    """Both comparisons failed on the support check (each reason quotes its summary)."""
    summary = ((report.get("ope") or {}).get("support") or {}).get("summary")
    return bool(summary) and all(not e["passed"] and summary in e["reason"] for e in each)


def _support(ope: dict) -> str:
    """Whether the log can judge the shadow router at all (`router.ope.support`), in words."""
    sup = ope.get("support")
    if not sup or sup["verdict"] == "empty":
        return ""
    summary = html.escape(sup["summary"])
    if sup["verdict"] == "supported":
        return f'<p class="support ok"><b>Support: the log supports the shadow router\'s choices.</b> {summary}.</p>'
    if sup["verdict"] == "inconsistent":
        return (f'<p class="support bad"><b>Support: the logged propensities do not add up.</b> {summary}; check what '
                f"logged them (learning.bandit) before trusting any estimate below.</p>")
    point, interval = never_shown(sup)
    never = f"{point} ({interval})" if interval else point
    known = (f" ({_pct(sup['unsupported_known'])} for certain: the live gateway served a model with probability 1 "
             f"where the shadow router chose another)" if sup["unsupported_known"] else "")
    return (f'<p class="support bad"><b>Support: the log does not support the shadow router\'s choices.</b> About '
            f"{never} of them are choices the live gateway never made, or made too rarely to show{known}. Every "
            "estimator guesses their rewards (IPS counts them as 0, SNIPS as the supported choices' mean, DR takes the "
            "live router's predictions), so the estimates below may disagree, even in sign, and none decides. Let the "
            "bandit explore (learning.bandit.explore_share) so the gateway sometimes serves what the shadow router "
            "would, or collect more traffic.</p>")


def never_shown(sup: dict) -> tuple[str, str]:
    """1 − the mean importance weight, the share of the shadow's choices the log never shows, and its
    95 % interval: on a few hundred requests the point alone reads far surer than it is. The point is
    never below the share known for certain, as `router.ope.Support.describe` says it."""
    w = sup["weight_mean"]
    if _missing(w["value"]):
        return "–", ""

    def share(x: float, floor: float = 0.0) -> str:
        return _pct(min(1.0, max(floor, 1.0 - x)))

    point = share(w["value"], sup.get("unsupported_known") or 0.0)
    return point, "" if _missing(w["lo"]) else f"95 % interval {share(w['hi'])} .. {share(w['lo'])}"


# Per comparison: its baseline as the tables' columns name it, and whether its own level is observed.
SHORT = {"vs_served": ("served", "observed"), "vs_live_router": ("live router", "estimated")}


def _ope_table(c: dict, judging: str | None, key: str) -> str:
    """One comparison's paired differences, beside the baseline's own level (the same estimator's)."""
    short, known = SHORT[key]
    diff, level = f"shadow − {short}", f"{short} level ({known})"
    rows = {}
    for metric, show in (("utility", _signed), ("quality", _signed), ("cost_usd", usd_per_1k)):
        label = "cost $ per 1k requests" if metric == "cost_usd" else metric
        for est in ESTIMATORS:
            e = c[metric]["difference"].get(est)
            if e is None:
                continue
            base = c[metric].get("live", {}).get(est, {}).get("value")
            interval = "–" if _missing(e["lo"]) else f"{show(e['lo'])} .. {show(e['hi'])}"
            rows[f"{label} · {est.upper()}"] = {diff: show(e["value"]), level: "–" if _missing(base) else show(base).lstrip("+"),
                                                "95 % interval": interval, "n": e["n"], "effective n": e.get("ess"),
                                                "": "decides" if metric == "utility" and est == judging else ""}
    return _table(rows, [diff, level, "95 % interval", "n", "effective n", *([""] if judging else [])])


def _utility_note(ope: dict) -> str:
    w = ope.get("wtp_usd")
    if not w:
        return ""
    wtp = (usd(w["mean"]) if w["min"] == w["max"]
           else f"{usd(w['min'])} to {usd(w['max'])} by request (mean {usd(w['mean'])})")
    return (f"<p>utility = P(good) − cost / WTP (WTP {wtp} per quality point: the willingness to pay the live "
            "requests were routed with), in quality points; P(good) is the feedback score. Each level column is the "
            "baseline's own value: what the gateway served is observed, the live router's own choices are "
            "estimated by the same estimator.</p>")


def _comparisons(report: dict, img) -> str:
    """Retrain's two comparisons, plot and table each, under their baseline and whether they passed."""
    from training.shadow_report import BASELINE_TITLES, COMPARISONS, deciding

    v, decide, out = report["verdict"], deciding(report), []
    for key, name in COMPARISONS.items():
        if name not in report:
            continue
        passed = v.get("each", {}).get(key, {}).get("passed")
        said = "" if passed is None else f": {'passed' if passed else 'failed'}"
        out.append(f"<h3>Against {html.escape(BASELINE_TITLES[key])}{said}"
                   f"{' (decides the verdict)' if key in decide else ''}</h3>{img(name)}"
                   f"{_ope_table(report[name], v['estimator'] if key in decide else None, key)}")
    return "".join(out)


def _overlap_note(ope: dict) -> str:
    """IPS and SNIPS learn only from requests where the shadow picks the logged model: at low
    overlap IPS reads far below the other estimates, and `n` alone would overstate the evidence."""
    ess = ope["quality"]["difference"].get("snips", {}).get("ess")
    return (f"<p>The shadow router picks the model the live gateway served on {_pct(ope['overlap'])} of these "
            f"{ope['n']} requests. IPS and SNIPS weigh only those (effective sample size {_fmt(ess)}); IPS counts "
            "the others as zero reward, so at low overlap it undercounts the shadow router, and DR leans on its "
            "reward model (docs/LEARNING.md).</p>")


def _predicted_note(o: dict) -> str:
    left_out = o["requests"] - o["predicted_requests"]
    return (f"<p>Δ predicted: what choosing differently is predicted to change, under one predictor (the shadow "
            f"router's): its prediction for its own choice minus its prediction for the model served, mean "
            f"over {o['predicted_requests']} requests, 0 wherever it chose the model served"
            + (f" ({left_out} left out: the shadow router had no prediction for the model served)" if left_out else "")
            + ". The two predictors also differ on one and the same model, the one served, by P(good) "
            f"{_signed(o['predictor_gap_p_good'])}, {usd_per_1k(o['predictor_gap_cost_usd'])} per 1,000 requests, "
            f"latency {seconds(o['predictor_gap_latency_s'], True)} s (the shadow's minus the live router's): a "
            "difference of predictors, not of choices (the predictor gap below).</p>")


def _skipped_note(calls: dict) -> str:
    """Calls drawn but skipped by the spend cap, per model: the observed deltas leave them out."""
    if not calls["skipped_by_cap"]:
        return ""
    per_model = ", ".join(f"{html.escape(m)} {c['skipped_by_cap']} of {c['drawn']}"
                          for m, c in calls.get("by_model", {}).items() if c["skipped_by_cap"])
    return (f"<p class=\"support bad\"><b>{calls['skipped_by_cap']} of the {calls['drawn']} shadow calls drawn "
            f"(learning.shadow.call_share) were skipped by the spend cap</b> (learning.shadow.max_call_cost_usd, per "
            f"gateway process): {per_model}. Each call first reserves the most it could be billed (the prompt with a "
            "margin, the longest answer allowed), and is not made where that reservation, beside what was spent and "
            f"is reserved, would pass the cap; the largest reservation skipped was "
            f"{usd(calls['skipped_reserved_usd_max'])}. The observed deltas below cover only the {calls['calls']} calls "
            "made, and the skips fall on the calls that could cost most (dearer models, longer prompts): they read the "
            "shadow router's choices cheaper than they are. A cap above the spend plus the largest reservation calls "
            "them too.</p>")


def _calls_note(calls: dict) -> str:
    if not calls["latency_compared"]:
        return ("<p>No shadow call was made and timed against a whole live answer: on the share learning.shadow.call_share "
                "of the requests where the model served is not the shadow router's choice, its choice is called too.</p>")
    return (f"<p>Δ upstream latency: the shadow call's time (never streamed) minus the live answer's upstream call "
            f"(the attempt that answered; a streamed one until its last chunk), on {calls['latency_compared']} "
            f"requests that ended in a whole answer. The live request's whole handling time is longer by the "
            f"gateway's own time (routing, embedding, hooks): {seconds(calls['live_gateway_time_s'])} s on average "
            f"there.</p>")


OBSERVED = ("Quality differences are off-policy estimates or predictions, never observed: the shadow router's answers "
            "get no feedback. Cost and latency are observed on the shadow calls made (the last section); elsewhere "
            "they are estimated or predicted too.")


def _tasks_left_out(by_task: dict) -> str:
    from training.shadow_report import shown_tasks

    drawn = len(shown_tasks(by_task))
    return ("" if drawn == len(by_task) else
            f"<p>The plot draws the {drawn} tasks with most requests of {len(by_task)}; the table lists them all.</p>")


def _served(level, show) -> str:
    return "" if _missing(level) else f"; served {show(level)}"


CALL_COLUMNS = ["drawn", "calls", "ok", "skipped_by_cap", "skipped_reserved_usd_max", "spend_usd", "delta_cost_usd",
                "delta_latency_s", "latency_compared"]
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.4}
.verdict{font-size:1.15em;padding:12px 16px;border-radius:8px;margin:1em 0 .3em}.verdict.keep{background:#fdecea;border-left:6px solid #c62828}
.verdict.switch{background:#e8f5e9;border-left:6px solid #2e7d32}.verdict.none{background:#f4f6f8;border-left:6px solid #888}
.how{color:#555;font-size:.9em}.verdict ul{font-size:.8em;margin:.4em 0 0;padding-left:1.2em}.support{padding:8px 12px;border-radius:6px}.support.bad{background:#fff4e5}.support.ok{background:#eef7ee}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:1em 0}.card{background:#f4f6f8;border-radius:8px;padding:10px 16px}
.card b{display:block;font-size:1.5em}.card small{display:block;color:#555}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right;white-space:nowrap}
th{white-space:normal;max-width:8em;vertical-align:bottom}
td:first-child,td.list{text-align:left}td.mark{color:#c62828;font-weight:bold}img{max-width:100%}"""


def agreement_cards(o: dict) -> list[tuple[str, str, str]]:
    """Agreement with the live router's own choice, then with what was served; one card, saying
    which it is, on a log from before the live router's own choice was recorded."""
    unlogged = o["router_choice_unlogged"]
    if unlogged == o["requests"]:
        return [("agreement", _pct(o["agreement_served"]),
                 "with what was served: the log predates recording the live router's own choice")]
    before = f"; {unlogged} requests logged before it was recorded: with what was served" if unlogged else ""
    return [("agreement with the live router", _pct(o["agreement"]), f"its own choice, before the bandit{before}"),
            ("agreement with what was served", _pct(o["agreement_served"]), "the bandit's explorations and refinements included")]


def _by_live_model_note(o: dict) -> str:
    unlogged = o["router_choice_unlogged"]
    if unlogged == o["requests"]:
        return ("<p>Requests by the model served: the log predates recording the live router's own choice, so every "
                "agreement below is with what was served.</p>")
    before = (f" ({unlogged} requests logged before it was recorded: by the model served, agreement with it)"
              if unlogged else "")
    return (f"<p>Requests by the live router's own choice{before}; served: the models the gateway served on them (the "
            "bandit's explorations and refinements, a tool loop kept on its turn's model).</p>")


def render_html(report: dict, images: dict[str, str]) -> str:
    o, calls, v = report["overall"], report["observed_shadow_calls"], report["verdict"]
    ope = report.get("ope")
    served = report.get("observed_live", {})
    # A delta means little without the level it moves: the served traffic's own, as observed.
    quality = f"; served P(good) {_fmt(ope['logged']['quality'])}" if ope and "logged" in ope else ""
    cards = [("requests", _fmt(o["requests"]), ""), *agreement_cards(o),
             ("Δ predicted P(good)", _signed(o["predicted_delta_p_good"]), f"shadow's choice − the model served{quality}"),
             ("Δ predicted cost", usd_per_1k(o["predicted_delta_cost_usd"]),
              "per 1,000 requests" + _served(served.get("cost_usd"), lambda c: usd_per_1k(c, signed=False))),
             ("Δ predicted latency", f"{seconds(o['predicted_delta_latency_s'], True)} s",
              "per request" + _served(served.get("latency_s"), lambda t: f"{seconds(t)} s")),
             ("shadow calls made", _fmt(calls["calls"]),
              f"{calls['skipped_by_cap']} skipped by the spend cap" if calls["skipped_by_cap"] else "")]
    if ope and ope.get("support") and ope["support"]["verdict"] != "empty":
        sup = ope["support"]
        point, interval = never_shown(sup)
        known = f"{_pct(sup['unsupported_known'])} for certain" if sup["unsupported_known"] else ""
        cards.append(("choices the log never shows", point, "; ".join(filter(None, [interval, known, f"support: {sup['verdict']}"]))))
    img = lambda k: f'<img src="data:image/png;base64,{images[k]}" alt="{k}">' if k in images else ""  # noqa: E731
    cols = ["requests", "agreement", "agreement_served", "predicted_delta_p_good", "predicted_delta_cost_usd", "predicted_delta_latency_s"]
    gaps = ["predictor_gap_p_good", "predictor_gap_cost_usd", "predictor_gap_latency_s"]
    ope_part = (_support(ope) + _utility_note(ope) + _comparisons(report, img) + _overlap_note(ope) if ope else
                "<p>No logged request with feedback overlaps the shadow decisions yet.</p>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Shadow router report</title>
<style>{STYLE}</style></head><body>
<h1>Shadow router vs live router</h1>
{_verdict(report, v)}
<div class="cards">{''.join(f'<div class="card">{html.escape(k)}<b>{val}</b><small>{html.escape(note)}</small></div>' for k, val, note in cards)}</div>
<p class="how">{OBSERVED}</p>
<h2>Off-policy estimates (logged traffic with feedback)</h2>
{ope_part}
<h2>Choices</h2>{img("traffic")}{img("timeline")}
{_predicted_note(o)}
<h2>By task</h2>{img("agreement")}{_tasks_left_out(report["by_task"])}
<p>Δ predicted: the shadow router's prediction for its own choice minus its prediction for the model served (0 where it chose that model).</p>{_table(report["by_task"], cols)}
<h2>By live model</h2>{_by_live_model_note(o)}{_table(report["by_live_model"], [*cols, "served", "shadow_choices"])}
<h3>The two predictors on the model served</h3>
<p>Gap: the shadow router's prediction for the model the gateway served minus the live router's own; a difference of
predictors, not of choices. Rows by the model served.</p>{_table({"all requests": o, **report["by_served_model"]}, ["requests", *gaps])}
<h2>Shadow calls (observed)</h2>{_skipped_note(calls)}{_table({"all shadow models": calls, **calls.get("by_model", {})}, CALL_COLUMNS)}
{_calls_note(calls)}
</body></html>"""
