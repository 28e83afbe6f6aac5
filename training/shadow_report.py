"""`openclaw-router shadow-report --db URL --out DIR`: how would the shadow router have done?

Reads the shadow decisions, the outcome log and the feedback beside it, and writes
`shadow_report.json` (every number) and `shadow_report.html` (one self-contained page:
the verdict, headline numbers, plots embedded as PNG, per-task and per-model tables;
`training.shadow_report_html`):

* verdict: switch to the shadow router or keep the live one, as `openclaw-router retrain` would
  judge a candidate on these estimates (`training.retrain.promotion`, its default estimator and
  least number of requests, refusing where the log does not support the shadow router's choices);
* agreement with the live router: the share of live requests on which the shadow router chose
  what the live router itself chose, before the bandit re-decided (explored or refined) and before
  a tool loop's step was kept on its turn's model; beside it, agreement with what was served. A
  log from before the live router's own choice was recorded counts what was served instead, and
  says how many requests it did so for (`router_choice_unlogged`);
* predicted deltas: what the shadow router's choice changes, under one predictor (the
  shadow's): its prediction for its own choice minus its prediction for the model served
  (P(good), cost, latency), 0 wherever the shadow chose the model served. Apart from them, the predictor
  gap: the shadow's prediction for the model served minus the live router's, a difference of
  predictors, not of choices (the two add up to shadow-for-its-choice minus live-for-its-choice);
* observed deltas: on requests where the shadow model was also called, its measured cost
  minus the live answer's, and its call's time minus the live answer's upstream call's (the
  attempt that answered), like with like: the live request's whole handling time adds the
  gateway's own (routing, embedding, hooks), reported beside it. Only the calls made: those
  drawn but skipped by the spend cap (`learning.shadow.max_call_cost_usd`) are counted per model,
  as they fall on the dearer models;
* off-policy estimates: the shadow router's value on the logged traffic (IPS, SNIPS, DR,
  95 % intervals) against what the live gateway served (the logged policy: the live router
  and its bandit), for quality, utility and cost, using the live propensities and the
  feedback rewards; and, for the verdict, against the live router's own choices.
"""
from __future__ import annotations

import base64
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from router.feedback_log import SKIPPED_BY_CAP
from router.feedback_log import ROUTER_CHOICE
from training.outputs import non_negative_int
from training.shadow_report_html import render_html
from training.support_advice import GENERIC, exploration_advice

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


def router_choice(row: dict) -> str:
    """The live router's own choice on a shadow row (`service.hooks.learning_hook.served_candidate`);
    the model served on a row logged before that was recorded."""
    return (row.get("live_candidate") or {}).get(ROUTER_CHOICE) or row["live_model"]


def agrees(row: dict) -> bool:
    """The shadow router chose what the live router itself chose."""
    return row["shadow_model"] == router_choice(row)


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
            row["upstream_latency_s"] = upstream_latency(status, answered, from_row({"request_id": rid, "attempts": attempts})["attempts"])
        out[rid] = row
    return out


def _grouped(rows: list[dict], key) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return dict(sorted(out.items(), key=lambda kv: kv[0].casefold()))  # model names mix cases: gpt-4 beside WizardLM


def _calls(shadows: list[dict], outcomes: dict[str, dict]) -> dict:
    """The shadow calls among `shadows`: drawn, made, skipped by the spend cap, and the made ones'
    cost and time against the live answer's."""
    called = [r for r in shadows if r["called"] and r["call_status"] == "ok" and r["request_id"] in outcomes]
    # Like with like: the shadow's bare upstream call against the live answer's upstream call, not
    # against the live request's handling time (routing, embedding, hooks besides).
    timed = [(r, outcomes[r["request_id"]]) for r in called
             if r["call_latency_s"] is not None and outcomes[r["request_id"]].get("upstream_latency_s") is not None]
    skipped = [r for r in shadows if r["call_status"] == SKIPPED_BY_CAP]
    reserved = [r["call_reserved_usd"] for r in skipped if r.get("call_reserved_usd") is not None]  # None: logged before it was
    return {
        "drawn": sum(r["called"] for r in shadows) + len(skipped), "calls": sum(r["called"] for r in shadows),
        "ok": len(called), "skipped_by_cap": len(skipped),
        # the most a skipped call would have held against the cap: above the cap, no such call can be made
        "skipped_reserved_usd_max": max(reserved, default=None),
        "spend_usd": float(sum(r["call_cost_usd"] or 0.0 for r in shadows)),
        "delta_cost_usd": _mean([r["call_cost_usd"] - (outcomes[r["request_id"]].get("cost_usd") or 0.0) for r in called]),
        "delta_latency_s": _mean([r["call_latency_s"] - o["upstream_latency_s"] for r, o in timed]),
        "latency_compared": len(timed),
        # what the live request's handling time adds to its upstream call
        "live_gateway_time_s": _mean([o["latency_s"] - o["upstream_latency_s"] for _, o in timed if o["latency_s"] is not None]),
    }


def summarize(shadows: list[dict], outcomes: dict[str, dict], labels: dict[str, str], traffic=None, seed: int = 0,
              advise=None) -> dict:
    """Every number of the report, from shadow rows, outcome rows by id and task labels. `advise(held_out,
    choices)` says what the log shows held exploration back (`training.support_advice.exploration_advice`),
    where the log cannot judge the shadow router; without it the advice is the generic one."""
    from training.offpolicy import compare_policies, greedy_probs
    from router import ope

    advice = GENERIC

    def task_of(r):
        return labels.get(r["request_id"]) or "unlabelled"

    def block(rows):
        out = {"requests": len(rows), "agreement": _mean([float(agrees(r)) for r in rows]),
               "agreement_served": _mean([float(r["agree"]) for r in rows]),
               "router_choice_unlogged": sum(ROUTER_CHOICE not in (r.get("live_candidate") or {}) for r in rows),
               # the shadow's own predictions for both choices: a row without one is left out
               "predicted_requests": sum(bool(r["shadow_candidate"] and r.get("shadow_on_live_choice")) for r in rows)}
        for k in PREDICTED:
            out[f"predicted_delta_{k}"] = _mean([_minus(r["shadow_candidate"], r.get("shadow_on_live_choice"), k) for r in rows])
        for k in PREDICTED:
            out[f"predictor_gap_{k}"] = _mean([_minus(r.get("shadow_on_live_choice"), r["live_candidate"], k) for r in rows])
        return out

    report: dict = {"overall": block(shadows)}
    report["observed_shadow_calls"] = {**_calls(shadows, outcomes), "by_model": {
        m: _calls(rows, outcomes) for m, rows in _grouped(shadows, lambda r: r["shadow_model"]).items()
        if any(r["called"] or r["call_status"] == SKIPPED_BY_CAP for r in rows)}}
    report["by_task"] = {t: block(rows) for t, rows in _grouped(shadows, task_of).items()}
    # By the live router's own choice: where the bandit refined it, what was served says so beside it.
    report["by_live_model"] = {m: {**block(rows), "served": dict(Counter(r["live_model"] for r in rows)),
                                   "shadow_choices": dict(Counter(r["shadow_model"] for r in rows))}
                               for m, rows in _grouped(shadows, router_choice).items()}
    # The two predictors' gap is on the model served: grouped by it, not by the router's own choice.
    report["by_served_model"] = {m: block(rows) for m, rows in _grouped(shadows, lambda r: r["live_model"]).items()}
    report["traffic_share"] = {name: {m: c / len(shadows) for m, c in Counter(map(pick, shadows)).items()} if shadows else {}
                               for name, pick in (("live", router_choice), ("served", lambda r: r["live_model"]),
                                                  ("shadow", lambda r: r["shadow_model"]))}
    observed = [outcomes[r["request_id"]] for r in shadows if r["request_id"] in outcomes]
    report["observed_live"] = {"cost_usd": _mean([o.get("cost_usd") for o in observed]),
                               "latency_s": _mean([o.get("latency_s") for o in observed])}
    if traffic is not None and len(traffic):
        shadow_of = {r["request_id"]: r["shadow_model"] for r in shadows}
        keep = np.array([i for i, rid in enumerate(traffic.request_ids) if shadow_of.get(rid) in traffic.models], dtype=int)
        if len(keep):
            t = traffic.rows(keep)
            actions = np.array([t.models.index(shadow_of[rid]) for rid in t.request_ids])
            shadow = ope.deterministic_probs(actions, len(t.models))
            report["ope"] = compare_policies(t, None, shadow, t.p_logged, seed=seed)
            # retrain's second baseline: the live router's own choices (its logged predictions, no exploration)
            report["ope_vs_live_router"] = compare_policies(t, greedy_probs(t.p_logged, t), shadow, t.p_logged, seed=seed)
            # utility = quality - cost / WTP: the page names the WTP its estimates are in
            report["ope"]["wtp_usd"] = {"min": float(t.knob.min()), "max": float(t.knob.max()), "mean": float(t.knob.mean())}
            if advise is not None:
                advice = advise(t, actions)
    return {"verdict": verdict(report, advice), **report}


def _retrain_defaults() -> tuple[str, int]:
    """The estimator and least number of requests `openclaw-router retrain` judges by unless told
    otherwise: the report's verdict is the one retrain would give, not a rule of its own."""
    import argparse

    from training import retrain

    parser = argparse.ArgumentParser()
    retrain.configure(parser)
    return parser.get_default("estimator"), parser.get_default("min_requests")


def verdict(report: dict, advice: str = GENERIC) -> dict:
    """Whether to switch to the shadow router, by retrain's rule (`training.retrain.promotion`: better
    than what the gateway served and than the live router's own choices, each by `judge`) on the
    estimates before `finite` (it reads NaN as no estimate); reason None without any estimate."""
    from training.retrain import promotion

    estimator, least = _retrain_defaults()
    out = {"promote": False, "reason": None, "estimator": estimator, "min_requests": least}
    if "ope" in report:
        judged, each = promotion(report["ope"], report["ope_vs_live_router"], estimator, least, advice)
        out.update(promote=judged.promote, reason=judged.reason, each=each)
    return out


COMPARISONS = {"vs_served": "ope", "vs_live_router": "ope_vs_live_router"}


def deciding(report: dict) -> list[str]:
    """The comparisons (`COMPARISONS` keys) whose utility estimate decided the verdict: both where it
    promotes, the failed ones where it does not; none where the verdict came before the numbers (no
    feedback, too few requests, a log that does not support the shadow router, identical choices)."""
    v = report["verdict"]
    if v["reason"] is None:
        return []
    out = []
    for key, name in COMPARISONS.items():
        c = report[name]
        d = c.get("utility", {}).get("difference", {}).get(v["estimator"])
        on_numbers = (c["n"] >= v["min_requests"] and d is not None and not _unfinite(d["value"])
                      and (c.get("support") or {}).get("ok", True)
                      and not (key == "vs_live_router" and c.get("agreement") == 1.0))
        if on_numbers and (v["promote"] or not v["each"][key]["passed"]):
            out.append(key)
    return out


def _unfinite(v) -> bool:
    return v is None or not np.isfinite(v)


def headline(v: dict) -> str:
    """The verdict as one sentence to act on."""
    if v["reason"] is None:
        return ("No verdict yet: none of the requests the shadow router decided on has feedback, so there is nothing "
                "to estimate its value from; rate live answers (POST /v1/feedback) and run the report again.")
    if v["promote"]:
        return f"Switch to the shadow router (POST /admin/router/reload with its artifact): {v['reason']}."
    return f"Keep the live router: {v['reason']}."


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
    models = sorted(set().union(*share.values()), key=str.casefold)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = np.arange(len(models))
    for i, (name, label) in enumerate((("live", "live router"), ("served", "served"), ("shadow", "shadow"))):
        ax.bar(x + (i - 1) * 0.27, [share[name].get(m, 0) for m in models], 0.27, label=label)
    ax.set_xticks(x, [_plain(m) for m in models], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("share of requests")
    ax.set_title("Which model each router picks")
    ax.legend()
    fig.tight_layout()
    out["traffic"] = _png(fig)
    plt.close(fig)

    tasks = shown_tasks(report["by_task"])
    # A bar's room, not the figure's, stays fixed: 30 tasks in 3 inches overprinted their labels.
    fig, ax = plt.subplots(figsize=(7, max(2.4, 1.2 + 0.28 * len(tasks))))
    # With its request count: one request's 100 % otherwise looks like a task's 300 requests' 100 %.
    ax.barh([f"{_plain(_short(t))} ({v['requests']})" for t, v in tasks.items()],
            [v["agreement"] or 0 for v in tasks.values()], color="tab:green")
    ax.invert_yaxis()  # barh draws its first bar at the bottom: top down, as the table lists them
    ax.set_xlim(0, 1)
    ax.set_xlabel("agreement with the live router's own choice")
    ax.set_title("Agreement by task" + (f" (the {len(tasks)} with most requests)" if len(tasks) < len(report["by_task"]) else ""))
    fig.tight_layout()
    out["agreement"] = _png(fig)
    plt.close(fig)

    agree = np.array([float(agrees(r)) for r in shadows])
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

    decide = deciding(report) if "ope" in report else []
    for key, name in COMPARISONS.items():
        if name in report:
            fig = _ope_figure(plt, report[name], report["verdict"]["estimator"] if key in decide else None, BASELINE_TITLES[key])
            out[name] = _png(fig)
            plt.close(fig)
    return out


MAX_TASK_BARS = 40


def shown_tasks(by_task: dict[str, dict]) -> dict[str, dict]:
    """The tasks the agreement plot draws, in the table's order: the MAX_TASK_BARS with most requests."""
    if len(by_task) <= MAX_TASK_BARS:
        return by_task
    kept = set(sorted(by_task, key=lambda t: -by_task[t]["requests"])[:MAX_TASK_BARS])
    return {t: v for t, v in by_task.items() if t in kept}


def _short(label: str, most: int = 40) -> str:
    return label if len(label) <= most else label[:most - 1] + "…"


BASELINE_TITLES = {"vs_served": "what the gateway served (exploration included)",
                   "vs_live_router": "the live router's own choices (without exploration)"}


# Per metric: its label, the scale the figure draws it at and which way is better for the shadow router.
OPE_METRICS = (("utility", "utility (quality points)", 1.0, "above 0: shadow better"),
               ("quality", "quality (P(good))", 1.0, "above 0: shadow better"),
               ("cost_usd", "cost ($ per 1,000 requests)", 1000.0, "above 0: shadow dearer"))


def _ope_figure(plt, ope: dict, judging: str | None, baseline: str):
    """Each estimator's paired difference (shadow − `baseline`) with its 95 % interval, against 0: the two
    policies' own intervals overlap where the paired difference can still be clear, and the reverse.
    `judging`: the estimator whose utility decided the verdict, None where this comparison did not."""
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    for ax, (metric, label, scale, reads) in zip(axes, OPE_METRICS):
        diffs = ope[metric]["difference"]
        shown = [(est, diffs[est]) for est in ("ips", "snips", "dr")
                 if est in diffs and None not in (diffs[est].get("value"), diffs[est].get("lo"), diffs[est].get("hi"))
                 and np.isfinite(diffs[est]["value"])]
        ax.axhline(0.0, color="0.3", linewidth=1)
        for i, (est, d) in enumerate(shown):
            v, lo, hi = d["value"] * scale, d["lo"] * scale, d["hi"] * scale
            decides = est == judging and metric == "utility"
            ax.errorbar([i], [v], yerr=[[v - lo], [hi - v]], fmt="o", capsize=5, color="tab:red" if decides else "tab:blue",
                        markersize=7 if decides else 5)
        ax.set_xticks(range(len(shown)), [est.upper() + ("\n(decides)" if est == judging and metric == "utility" else "")
                                          for est, _ in shown], fontsize=8)
        ax.set_xlim(-0.6, max(len(shown), 1) - 0.4)
        ax.set_title(f"{label}\n{reads}", fontsize=9)
    fig.suptitle(f"Shadow router − {baseline}: paired differences with 95 % intervals", fontsize=10)
    fig.tight_layout()
    return fig


def agreement_words(o: dict) -> str:
    """Both agreements, saying which the first is on a log from before the live router's own choice was recorded."""
    unlogged = o["router_choice_unlogged"]
    if unlogged == o["requests"]:
        return f"agreement with what was served {o['agreement_served']:.1%} (the log predates recording the live router's own choice)"
    before = f"; {unlogged} requests logged before it was recorded count what was served" if unlogged else ""
    return (f"agreement with the live router's own choice {o['agreement']:.1%}{before}, "
            f"with what was served {o['agreement_served']:.1%}")


def configure(parser) -> None:
    parser.add_argument("--db", required=True,
                        help="outcome log URL holding the shadow decisions: sqlite:///PATH or postgresql://USER@HOST/DB")
    parser.add_argument("--out", required=True, help="folder for shadow_report.html and shadow_report.json")
    parser.add_argument("--seed", type=non_negative_int, default=0,
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
        report = finite(summarize(shadows, outcomes, labels, load_traffic(args.db), seed=args.seed,
                                  advise=lambda held_out, choices: exploration_advice(args.db, held_out, choices)))
        # The sentence the command prints, for a reader of the JSON too: a verdict without a reason
        # (no feedback yet) would read there as "keep".
        report["verdict"]["headline"] = headline(report["verdict"])
        (out / "shadow_report.json").write_text(json.dumps(report, indent=1))
        (out / "shadow_report.html").write_text(render_html(report, plots(report, shadows)))
    o, calls = report["overall"], report["observed_shadow_calls"]
    print(headline(report["verdict"]))
    skipped = f"; {calls['skipped_by_cap']} of {calls['drawn']} shadow calls drawn were skipped by the spend cap" \
        if calls["skipped_by_cap"] else ""
    print(f"{o['requests']} shadow decisions, {agreement_words(o)}{skipped}; wrote {out / 'shadow_report.html'}")
    return 0
