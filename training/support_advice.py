"""Why a log cannot judge a candidate (`router.ope.support`), and what would let it: the refusal
`retrain` and `shadow-report` give, with advice naming what held exploration back where that can be
seen. The gateway's own accounts show which cap binds (GET /admin/router/bandit, which `retrain
--gateway` reads); the log shows whether the gateway explored at all, where the total-spend cap
steered a refinement, and which choices were the bandit's refinements, played for certain outside
exploration. Exploration held back by explore_share or by extra_cost_share looks the same in the
log (the greedy choice with propensity 1), so without the gateway's accounts both are named.
"""
from __future__ import annotations

import re

import numpy as np

from router.bandit import SPEND_CAP_WHY

CAPS = "explore_share, or its spend caps extra_cost_share and total_cost_share where exploring's spend reaches them first"
SHOWN = "GET /admin/router/bandit shows each against its cap"
GENERIC = f"explore more (learning.bandit.enabled, then its {CAPS}: {SHOWN}) or collect more traffic"
# A refinement's logged reason (router/bandit.py `choose_for`): the bandit's choice, then the router's own;
# searched, not matched: a request that then failed over or was retried logs it after "...: fallback after ...; routed: ".
_REFINED = re.compile(r"bandit refinement: .+? instead of (.+?) \(")
_AT_CAP = 0.95  # the caps are checked before each decision adds to its account: bound, it hovers at the cap


def unsupported(support: dict | None, estimator: str, estimates: dict[str, dict], advice: str = GENERIC) -> str | None:
    """Why the log cannot judge the candidate, or None where it can; `estimates`: per baseline."""
    if not support or support["ok"]:
        return None
    shown = [f"{d['value']:+.4f} (95 % interval {d['lo']:+.4f} .. {d['hi']:+.4f}){f' against {against}' if against else ''}"
             for against, d in estimates.items() if np.isfinite(d["value"])]  # against "": the only one, unnamed
    guess = {"ips": "count{} their rewards as 0", "snips": "score{} them as the choices it can see",
             "dr": "take{} their rewards from the live router's predictions"}[estimator].format("s" if len(shown) == 1 else "")
    said = f"; {estimator.upper()}'s {' and '.join(shown)} {guess}" if shown else ""
    if support["verdict"] == "inconsistent":
        return (f"the logged propensities do not add up: {support['summary']}{said}; check what logged them "
                f"(learning.bandit) before trusting any estimate on this log")
    return f"the log does not support the candidate's choices: {support['summary']}{said}; {advice}"


def exploration_advice(db: str, held_out, choices: np.ndarray, bandit: dict | None = None, gateway: str = "") -> str:
    """`GENERIC` told what this log shows: `held_out` (a `training.offpolicy.Traffic`) with the
    candidate's column on each row (`choices`), and, with `gateway`, that gateway's bandit state
    (GET /admin/router/bandit; None where its bandit is off)."""
    from router.outcome_log import scan_outcomes

    ids = set(held_out.request_ids)
    reasons = {rid: reason or "" for rid, reason in scan_outcomes(db, ["request_id", "reason"], "propensity IS NOT NULL")
               if rid in ids}
    logged = [reasons.get(rid, "") for rid in held_out.request_ids]
    explored = float(np.mean(held_out.propensity < 1.0 - 1e-9))
    said = [f"the gateway drew its choice at random on {explored:.1%} of these requests (propensity below 1)" if explored
            else "the gateway explored none of these requests (each is logged with propensity 1)"]
    steered = sum(SPEND_CAP_WHY in r for r in logged)
    if steered:
        said.append(f"the total-spend cap (learning.bandit.total_cost_share) bound while it logged them: it steered "
                    f"{steered} of their choices")
    if gateway and bandit is None:
        said.append(f"the bandit is off on {gateway}: turn on learning.bandit.enabled")
    elif bandit is not None:
        said.append(_caps_now(bandit, gateway))
    elif steered:
        said.append(f"explore_share and extra_cost_share may bind as well ({SHOWN}; retrain --gateway reads them)")
    elif explored:
        said.append(f"what limits it is learning.bandit's {CAPS}, which the log cannot tell apart ({SHOWN}; retrain "
                    f"--gateway reads them)")
    else:
        said.append(f"turn on learning.bandit.enabled, or, where it is on, what stops it is its {CAPS} ({SHOWN}; retrain "
                    f"--gateway reads them)")
    certain = np.flatnonzero((held_out.propensity >= 1.0 - 1e-9) & (choices != held_out.action))
    refined = [(i, m.group(1)) for i in certain if (m := _REFINED.search(logged[i]))]
    if refined:
        back = sum(held_out.models[choices[i]] == own for i, own in refined)
        said.append(f"{len(refined)} of the {len(certain)} choices the candidate changes where the log chose for certain "
                    f"are the bandit's refinements (feedback or realised prices moved its choice off the router's own; "
                    f"outside exploration it plays them with propensity 1)"
                    + (f", {back} of them back to the router's own choice" if back else ""))
    return f"explore more: {'; '.join(said)}; or collect more traffic"


def _caps_now(state: dict, gateway: str) -> str:
    """Which of the bandit's caps bind now, by its accounts over its recent decisions (`budget_horizon`)."""
    caps, recent = state.get("caps"), state.get("recent") or {}
    if not caps:  # a gateway from before the endpoint reported its caps
        return f"what limits it is learning.bandit's {CAPS} ({SHOWN})"
    binding, free = [], []
    for name in ("explore_share", "new_model_explore_share", "extra_cost_share"):
        cap, value = caps.get(name), float(recent.get(name, 0.0))
        if cap is not None:  # a new-model cap of 0 binds only where there is a new model
            bound = value >= _AT_CAP * cap and (cap > 0 or name != "new_model_explore_share")
            (binding if bound else free).append(f"{name} {value:.4f} (cap {cap:g})")
    total = caps.get("total_cost_share")
    if total is not None:  # its shadow price on spend is on only while the spend is over that cap
        (binding if state.get("spend_price_per_usd", 0.0) > 0 else free).append(
            f"total_cost_share {state.get('total_cost_share', 0.0):+.4f} since start (cap {total:g})")
    # The shares are decayed over the bandit's budget horizon: `recent.decisions` is that weight, not
    # a count of the latest decisions (523 read "its last 523 decisions" after 740 of them).
    made = state.get("decisions")
    since = f", {made:,} since start" if isinstance(made, int) else ""
    window = f"on {gateway} now (its recent decisions, weighing about {float(recent.get('decisions', 0.0)):,.0f}{since}), "
    if not binding:
        return (f"{window}no cap of learning.bandit binds ({', '.join(free)}): it explores only models whose optimistic "
                f"utility comes within learning.bandit.utility_margin of the best")
    one = len(binding) == 1
    return (f"{window}learning.bandit's {' and '.join(binding)} {'has' if one else 'have'} reached the cap: raise "
            f"{'it' if one else 'them'}" + (f"; {', '.join(free)} {'is' if len(free) == 1 else 'are'} not what stops it"
                                            if free else ""))
