"""`openclaw-router shadow-report --db URL --out DIR`: how would the shadow router have done?

Reads the shadow decisions, the outcome log and the feedback beside it, and writes
`shadow_report.json` (every number) and `shadow_report.html` (one self-contained page:
headline numbers, plots embedded as PNG, per-task and per-model tables):

* agreement: the share of live requests on which the shadow router chose the live model;
* predicted deltas: what the shadow router's choice changes, under one predictor (the
  shadow's): its prediction for its own choice minus its prediction for the live choice
  (P(good), cost, latency), 0 wherever the two routers agree. Apart from them, the predictor
  gap: the shadow's prediction for the live choice minus the live router's, a difference of
  predictors, not of choices (the two add up to shadow-for-its-choice minus live-for-its-choice);
* observed deltas: on requests where the shadow model was also called, its measured cost
  minus the live answer's, and its call's time minus the live answer's upstream call's (the
  attempt that answered), like with like: the live request's whole handling time adds the
  gateway's own (routing, embedding, hooks), reported beside it;
* off-policy estimates: the shadow router's value on the logged traffic (IPS, SNIPS, DR,
  95 % intervals) against what the live gateway served (the logged policy: the live router
  and its bandit), for quality, utility and cost, using the live propensities and the
  feedback rewards.
"""
from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

PREDICTED = ("p_good", "cost_usd", "latency_s")
# What the report reads of each outcome row: the attempts only for requests with a shadow call.
LIVE_COLUMNS = ("request_id", "status", "answered_model", "cost_usd", "latency_s", "attempts")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
    return float(np.mean(values)) if values else None


def _minus(a: dict | None, b: dict | None, key: str) -> float | None:
    """`a[key] - b[key]`, None where either prediction is missing."""
    x, y = (a or {}).get(key), (b or {}).get(key)
    return None if x is None or y is None else x - y


def upstream_latency(status: str | None, answered: str | None, attempts: list[dict] | None) -> float | None:
    """The live answer's upstream call alone (the attempt that answered; a streamed one until its
    last chunk): None for a request that did not end in a whole answer."""
    from router.outcome_log import answering_attempt

    attempt = answering_attempt(attempts, answered) if status == "ok" else None
    return None if attempt is None else attempt.get("latency_s")


def live_outcomes(db: str, wanted: set[str], called: set[str]) -> dict[str, dict]:
    """Cost and handling time of the live requests in `wanted`, and for those in `called` the
    upstream call's time; read row by row, the rest of the log never held."""
    from router.outcome_log import from_row, scan_outcomes

    out = {}
    for rid, status, answered, cost, latency, attempts in scan_outcomes(db, LIVE_COLUMNS):
        if rid not in wanted:
            continue
        row = {"cost_usd": cost, "latency_s": latency}
        if rid in called:
            row["upstream_latency_s"] = upstream_latency(status, answered, from_row({"attempts": attempts})["attempts"])
        out[rid] = row
    return out


def summarize(shadows: list[dict], outcomes: dict[str, dict], labels: dict[str, str], traffic=None, seed: int = 0) -> dict:
    """Every number of the report, from shadow rows, outcome rows by id and task labels."""
    from training.offpolicy import compare_policies
    from router import ope

    def task_of(r):
        return labels.get(r["request_id"]) or "unlabelled"

    def block(rows):
        out = {"requests": len(rows), "agreement": _mean([float(r["agree"]) for r in rows]),
               # the shadow's own predictions for both choices: a row without one is left out
               "predicted_requests": sum(bool(r["shadow_candidate"] and r.get("shadow_on_live_choice")) for r in rows)}
        for k in PREDICTED:
            out[f"predicted_delta_{k}"] = _mean([_minus(r["shadow_candidate"], r.get("shadow_on_live_choice"), k) for r in rows])
        for k in PREDICTED:
            out[f"predictor_gap_{k}"] = _mean([_minus(r.get("shadow_on_live_choice"), r["live_candidate"], k) for r in rows])
        return out

    report: dict = {"overall": block(shadows)}
    called = [r for r in shadows if r["called"] and r["call_status"] == "ok" and r["request_id"] in outcomes]
    # Like with like: the shadow's bare upstream call against the live answer's upstream call, not
    # against the live request's handling time (routing, embedding, hooks besides).
    timed = [(r, outcomes[r["request_id"]]) for r in called
             if r["call_latency_s"] is not None and outcomes[r["request_id"]].get("upstream_latency_s") is not None]
    report["observed_shadow_calls"] = {
        "calls": sum(r["called"] for r in shadows), "ok": len(called),
        "spend_usd": float(sum(r["call_cost_usd"] or 0.0 for r in shadows)),
        "delta_cost_usd": _mean([r["call_cost_usd"] - (outcomes[r["request_id"]].get("cost_usd") or 0.0) for r in called]),
        "delta_latency_s": _mean([r["call_latency_s"] - o["upstream_latency_s"] for r, o in timed]),
        "latency_compared": len(timed),
        # what the live request's handling time adds to its upstream call
        "live_gateway_time_s": _mean([o["latency_s"] - o["upstream_latency_s"] for _, o in timed if o["latency_s"] is not None]),
    }
    by_task, by_model = defaultdict(list), defaultdict(list)
    for r in shadows:
        by_task[task_of(r)].append(r)
        by_model[r["live_model"]].append(r)
    report["by_task"] = {t: block(rows) for t, rows in sorted(by_task.items())}
    report["by_live_model"] = {m: {**block(rows), "shadow_choices": dict(Counter(r["shadow_model"] for r in rows))}
                               for m, rows in sorted(by_model.items())}
    report["traffic_share"] = {
        "live": {m: c / len(shadows) for m, c in Counter(r["live_model"] for r in shadows).items()} if shadows else {},
        "shadow": {m: c / len(shadows) for m, c in Counter(r["shadow_model"] for r in shadows).items()} if shadows else {},
    }
    observed = [outcomes[r["request_id"]] for r in shadows if r["request_id"] in outcomes]
    report["observed_live"] = {"cost_usd": _mean([o.get("cost_usd") for o in observed]),
                               "latency_s": _mean([o.get("latency_s") for o in observed])}
    if traffic is not None and len(traffic):
        shadow_of = {r["request_id"]: r["shadow_model"] for r in shadows}
        keep = np.array([i for i, rid in enumerate(traffic.request_ids) if shadow_of.get(rid) in traffic.models], dtype=int)
        if len(keep):
            t = traffic.rows(keep)
            actions = np.array([t.models.index(shadow_of[rid]) for rid in t.request_ids])
            report["ope"] = compare_policies(t, None, ope.deterministic_probs(actions, len(t.models)), t.p_logged, seed=seed)
    return report


def _plain(text: str) -> str:
    """A label as itself: matplotlib reads `$...$` as a formula (and fails on a bad one), and task
    labels come from clients' feedback."""
    return str(text).replace("$", r"\$")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


def plots(report: dict, shadows: list[dict]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    share = report["traffic_share"]
    models = sorted(set(share["live"]) | set(share["shadow"]))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = np.arange(len(models))
    ax.bar(x - 0.2, [share["live"].get(m, 0) for m in models], 0.4, label="live")
    ax.bar(x + 0.2, [share["shadow"].get(m, 0) for m in models], 0.4, label="shadow")
    ax.set_xticks(x, [_plain(m) for m in models], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("share of requests")
    ax.set_title("Which model each router picks")
    ax.legend()
    fig.tight_layout()
    out["traffic"] = _png(fig)
    plt.close(fig)

    tasks = report["by_task"]
    fig, ax = plt.subplots(figsize=(7, 3))
    # With its request count: one request's 100 % otherwise looks like a task's 300 requests' 100 %.
    ax.barh([f"{_plain(t)} ({v['requests']})" for t, v in tasks.items()], [v["agreement"] or 0 for v in tasks.values()],
            color="tab:green")
    ax.set_xlim(0, 1)
    ax.set_xlabel("agreement with the live router")
    ax.set_title("Agreement by task")
    fig.tight_layout()
    out["agreement"] = _png(fig)
    plt.close(fig)

    agree = np.array([float(r["agree"]) for r in shadows])
    if len(agree):
        w = max(1, len(agree) // 20)
        fig, ax = plt.subplots(figsize=(7, 2.6))
        # Each mean is drawn at its window's last request: at its first, the curve would end w
        # requests early and show every change before it happened.
        ax.plot(np.arange(w, len(agree) + 1), np.convolve(agree, np.ones(w) / w, mode="valid"))
        ax.set_xlim(0, len(agree))
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("request (in time order)")
        ax.set_ylabel(f"agreement, last {w}")
        ax.set_title("Agreement over time")
        fig.tight_layout()
        out["timeline"] = _png(fig)
        plt.close(fig)

    if "ope" in report:
        fig, axes = plt.subplots(1, 3, figsize=(9, 3))
        for ax, metric in zip(axes, ("quality", "utility", "cost_usd")):
            ests = report["ope"][metric]
            shown = [(f"{who}\n{est}", ests[who][est]) for est in ("snips", "dr") for who in ("live", "candidate")
                     if est in ests[who] and None not in (ests[who][est]["value"], ests[who][est]["lo"], ests[who][est]["hi"])]
            names, vals = [n for n, _ in shown], [v for _, v in shown]
            y = [v["value"] for v in vals]
            err = [[v["value"] - v["lo"] for v in vals], [v["hi"] - v["value"] for v in vals]]
            ax.errorbar(range(len(y)), y, yerr=err, fmt="o", capsize=4)
            ax.set_xticks(range(len(y)), names, fontsize=7)
            ax.set_title(metric)
        fig.suptitle("SNIPS and DR estimates, 95 % intervals (candidate = shadow; IPS in the table)")
        fig.tight_layout()
        out["ope"] = _png(fig)
        plt.close(fig)
    return out


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _signed(v) -> str:
    return "–" if v is None else f"{v:+.4g}"


def _pct(v) -> str:
    return "–" if v is None else f"{v:.1%}"


HEADERS = {"predicted_delta_p_good": "Δ P(good)", "predicted_delta_cost_usd": "Δ $", "predicted_delta_latency_s": "Δ latency s",
           "predictor_gap_p_good": "P(good) gap", "predictor_gap_cost_usd": "$ gap", "predictor_gap_latency_s": "latency s gap",
           "spend_usd": "spend $", "delta_cost_usd": "Δ cost $", "delta_latency_s": "Δ upstream latency s",
           "latency_compared": "n timed", "live_gateway_time_s": "live gateway time s",
           "shadow_choices": "shadow's choices"}


def _cell(col: str, v) -> str:
    if col == "agreement":
        return f"<td>{_pct(v)}</td>"
    if col == "shadow_choices":
        return '<td class="list">' + "<br>".join(html.escape(f"{m} {n}") for m, n in sorted(v.items(), key=lambda kv: -kv[1])) + "</td>"
    return f"<td>{_fmt(v)}</td>"


def _table(rows: dict[str, dict], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(HEADERS.get(c, c))}</th>" for c in ["", *cols])
    body = "".join(f"<tr><td>{html.escape(k)}</td>" + "".join(_cell(c, v.get(c)) for c in cols) + "</tr>"
                   for k, v in rows.items())
    return f"<table><tr>{head}</tr>{body}</table>"


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
            f"router's): its prediction for its own choice minus its prediction for the live router's choice, mean "
            f"over {o['predicted_requests']} requests, 0 wherever the two agree"
            + (f" ({left_out} left out: the shadow router had no prediction for the live choice)" if left_out else "")
            + ". The two predictors also differ on one and the same model, the live router's choice, by P(good) "
            f"{_signed(o['predictor_gap_p_good'])}, $ {_signed(o['predictor_gap_cost_usd'])}, latency "
            f"{_signed(o['predictor_gap_latency_s'])} s (the shadow's minus the live router's): a difference of "
            "predictors, not of choices (the predictor gap below).</p>")


def _calls_note(calls: dict) -> str:
    return (f"<p>Δ upstream latency: the shadow call's time (never streamed) minus the live answer's upstream call "
            f"(the attempt that answered; a streamed one until its last chunk), on {calls['latency_compared']} "
            f"requests that ended in a whole answer. The live request's whole handling time is longer by the "
            f"gateway's own time (routing, embedding, hooks): {_fmt(calls['live_gateway_time_s'])} s on average "
            f"there.</p>")


def render_html(report: dict, images: dict[str, str]) -> str:
    o = report["overall"]
    cards = [("requests", o["requests"]), ("agreement", _pct(o["agreement"])),
             ("Δ predicted P(good)", o["predicted_delta_p_good"]), ("Δ predicted $", o["predicted_delta_cost_usd"]),
             ("Δ predicted latency s", o["predicted_delta_latency_s"]),
             ("shadow calls", report["observed_shadow_calls"]["calls"])]
    ope_rows = {}
    if "ope" in report:
        for metric in ("quality", "utility", "cost_usd"):
            for est, e in report["ope"][metric]["difference"].items():
                ope_rows[f"{metric} · {est}"] = {"shadow − live": e["value"], "95% lo": e["lo"], "95% hi": e["hi"],
                                                  "n": e["n"], "effective n": e.get("ess")}
    img = lambda k: f'<img src="data:image/png;base64,{images[k]}" alt="{k}">' if k in images else ""  # noqa: E731
    cols = ["requests", "agreement", "predicted_delta_p_good", "predicted_delta_cost_usd", "predicted_delta_latency_s"]
    gaps = ["predictor_gap_p_good", "predictor_gap_cost_usd", "predictor_gap_latency_s"]
    calls = report["observed_shadow_calls"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Shadow router report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}}
.cards{{display:flex;flex-wrap:wrap;gap:12px}}.card{{background:#f4f6f8;border-radius:8px;padding:10px 16px}}
.card b{{display:block;font-size:1.5em}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ddd;padding:4px 8px;text-align:right;white-space:nowrap}}
td:first-child,td.list{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>Shadow router vs live router</h1>
<div class="cards">{''.join(f'<div class="card">{html.escape(k)}<b>{_fmt(v)}</b></div>' for k, v in cards)}</div>
{_predicted_note(o)}
<h2>Choices</h2>{img("traffic")}{img("timeline")}
<h2>Off-policy estimates (logged traffic with feedback)</h2>{img("ope")}
{_overlap_note(report["ope"]) + _table(ope_rows, ["shadow − live", "95% lo", "95% hi", "n", "effective n"]) if ope_rows else "<p>No logged request with feedback overlaps the shadow decisions yet.</p>"}
<h2>By task</h2>{img("agreement")}
<p>Δ: the shadow router's prediction for its own choice minus its prediction for the live choice (0 where they agree).</p>{_table(report["by_task"], cols)}
<h2>By live model</h2>{_table(report["by_live_model"], [*cols, "shadow_choices"])}
<h3>The two predictors on the live router's choice</h3>
<p>Gap: the shadow router's prediction for the model the live router chose minus the live router's own; a difference of
predictors, not of choices.</p>{_table({"all requests": o, **report["by_live_model"]}, ["requests", *gaps])}
<h2>Shadow calls (observed)</h2>{_table({"shadow calls": calls}, list(calls))}
{_calls_note(calls)}
</body></html>"""


def configure(parser) -> None:
    parser.add_argument("--db", required=True,
                        help="outcome log URL holding the shadow decisions: sqlite:///PATH or postgresql://USER@HOST/DB")
    parser.add_argument("--out", required=True, help="folder for shadow_report.html and shadow_report.json")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the bootstrap resampling behind the report's intervals (default: %(default)s)")


def run(args) -> int:
    from router.feedback_log import read_feedback, read_shadows
    from training.offpolicy import finite, load_traffic
    from training.outputs import check_outcome_log, check_output_dir, removed_if_left_empty

    check_outcome_log(args.db)
    shadows = read_shadows(args.db)
    if not shadows:
        raise ValueError(f"{args.db}: no shadow decisions logged; configure learning.shadow.artifact on the gateway")
    out = Path(args.out)
    with removed_if_left_empty(out):
        check_output_dir(out, "--out")  # an unusable --out fails before the report's work, not after it
        # Only what the report reads: every column, JSON decoded, took 1.27 GB at 100k rows, and
        # load_traffic reads what it needs itself, with the unusable rows left in the database.
        outcomes = live_outcomes(args.db, {r["request_id"] for r in shadows},
                                 {r["request_id"] for r in shadows if r["called"] and r["call_status"] == "ok"})
        labels = {r["request_id"]: r["label"] for r in read_feedback(args.db) if r.get("label")}
        report = finite(summarize(shadows, outcomes, labels, load_traffic(args.db), seed=args.seed))
        (out / "shadow_report.json").write_text(json.dumps(report, indent=1))
        (out / "shadow_report.html").write_text(render_html(report, plots(report, shadows)))
    o = report["overall"]
    print(f"{o['requests']} shadow decisions, agreement {o['agreement']:.1%}; wrote {out / 'shadow_report.html'}")
    return 0
