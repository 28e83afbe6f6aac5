"""The printed summary of an `openclaw-router simulate` report (the JSON holds the rest)."""
from __future__ import annotations

from training.simulate import ADAPTATION, MIN_LOSS


def _requests(n: int, spec: str = ",") -> str:
    return f"{n:{spec}} request{'' if n == 1 else 's'}"


def print_summary(out: dict, requests: int) -> None:
    """Totals, then per drift what became of it, then the report's warnings."""
    t = out["totals"]
    print(f"static: quality {t['static']['quality']:.4f} cost ${t['static']['cost']:.6f}/request | "
          f"bandit: quality {t['bandit']['quality']:.4f} cost ${t['bandit']['cost']:.6f}/request "
          f"({t['bandit_extra_cost_pct']:+.2f} % cost, {t['bandit_quality_delta_points']:+.2f} quality points, "
          f"explored {t['bandit_explore_share']:.1%})")
    for model, r in out.get("recovery", {}).items():
        # One entry: the only degradation's, or "all" measured from the last one to start.
        start = max(d["start"] for d in out["drift"] if d["kind"] == "degrade")
        allowed, left = r["from_request"] - start, requests - start
        short = ("" if allowed >= ADAPTATION else f" (measured after {allowed:,} of the {_requests(left)} "
                 f"that followed the drift at {start:,}, not the usual {ADAPTATION:,}, so that at least half are measured)")
        if r["recovered_share"] is None:
            print(f"degraded {model}: from request {r['from_request']:,}{short} the static router lost "
                  f"{100 * r['static_lost']:.2f} quality points, too few to measure a recovery of them by the bandit "
                  f"(a share of them is reported from {100 * MIN_LOSS:.2f} points lost)")
            continue
        # One line per measure: the loss, the bandit's share of it net (the headline), then gross
        # and against what a router told of the drift could regain.
        print(f"degraded {model}: from request {r['from_request']:,}{short}:\n"
              f"  the static router lost {100 * r['static_lost']:.2f} quality points\n"
              f"  the bandit regains {r['recovered_share_net']:.0%} of them, net of the "
              f"{100 * r['bandit_gap_without_drift']:+.2f} points it differs by without the drift "
              f"(gross: {r['recovered_share']:.0%})")
        ceiling = r.get("recovered_share_of_recoverable")
        if ceiling is not None:
            print(f"  a static router told of the drift regains {100 * r['informed_static_regained']:.2f} points; "
                  f"the bandit regains {ceiling:.0%} of that")
    starts = {d["model"]: d["start"] for d in out["drift"] if d["kind"] == "add"}
    for model, a in out.get("added", {}).items():
        if a["bandit_share_first_1000"] is None:
            print(f"added {model}: never arrived: add:{model}@{starts[model]} starts after the last of the "
                  f"{_requests(requests, '')}")
            continue
        only = a["where_only_bandit_chose_it"]
        first = f"first routed at request {a['first_routed_at']}" if a["first_routed_at"] is not None else "never routed"
        gain = (f"; on the {_requests(only['requests'])} only the bandit sent to it, quality "
                f"{only['added_model_quality']:.3f} against {only['static_choice_quality']:.3f} for the static router's "
                f"choice{'s' if only['requests'] > 1 else ''}" if only["requests"] else "")
        after = min(1000, requests - starts[model])  # the share's requests: fewer where the stream ends first
        print(f"added {model}: {first}, {a['bandit_share_first_1000']:.0%} of the {_requests(after)} after it came{gain}")
    if "note" in out["setup"]:
        print(f"warning: {out['setup']['note']}")
    for d in out["drift"]:
        if d["kind"] == "degrade" and d["start"] >= requests:
            print(f"note: the drift degrade:{d['model']}@{d['start']} starts after the last of the {_requests(requests, '')}")
