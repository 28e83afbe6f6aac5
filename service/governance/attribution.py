"""Who spent what: spend by key, team, project, user tag, model and day, from the spend log.

Reports read the durable spend log (one row per request, written at settle time), so every
replica's traffic is in them. Prometheus counters carry the same labels for live graphs.
Labels are key *names* and ids, never secrets.

A week of traffic is a million rows and more: reports aggregate in SQL (nothing fetches a row
per request) and read through `Database.read`, so however long one takes, no request's budget
reserve or settle waits for it.
"""
from __future__ import annotations

import calendar
import csv
import io
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Sequence

from service.governance.db import Database

# group_by name -> spend-log column
DIMENSIONS = {"key": "key_id", "team": "team", "project": "project", "user": "user_tag", "model": "model", "day": "day",
              "status": "status"}
USD = 1e9


class SpendMetrics:
    def __init__(self, registry: Any):
        from prometheus_client import Counter

        labels = ["key", "team", "project", "user", "model"]
        self.spend = Counter("openclaw_governed_spend_usd", "Settled spend in USD by key, team, project, user tag and model",
                             labels, registry=registry)
        self.requests = Counter("openclaw_governed_requests", "Requests by key, team, project, user tag, model and status",
                                labels + ["status"], registry=registry)
        self.refusals = Counter("openclaw_governance_refusals", "Requests refused by governance, by reason",
                                ["reason"], registry=registry)
        self.soft_shifts = Counter("openclaw_budget_soft_shifts", "Requests routed cheaper because a budget neared its limit",
                                   ["key"], registry=registry)

    def record(self, row: dict[str, Any]) -> None:
        labels = [row.get("key_name") or "anonymous", row.get("team") or "", row.get("project") or "",
                  row.get("user_tag") or "", row.get("model") or "none"]
        self.spend.labels(*labels).inc(row["cost_nusd"] / USD)
        self.requests.labels(*labels, row["status"]).inc()


def _where(since: float | None, until: float | None, filters: dict[str, str] | None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if since is not None:
        clauses.append("ts >= ?")
        params.append(since)
    if until is not None:
        clauses.append("ts < ?")
        params.append(until)
    for dim, value in (filters or {}).items():
        clauses.append(f"{DIMENSIONS[dim]} = ?")
        params.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _and(where: str, clause: str) -> str:
    """`where` (from `_where`, possibly empty) narrowed by one more clause."""
    return f"{where} AND {clause}" if where else f" WHERE {clause}"


class Attribution:
    def __init__(self, db: Database):
        self.db = db

    def spend(self, group_by: Sequence[str], since: float | None = None, until: float | None = None,
              filters: dict[str, str] | None = None) -> list[dict[str, Any]]:
        unknown = [g for g in group_by if g not in DIMENSIONS]
        if unknown:
            raise ValueError(f"group_by must be among {sorted(DIMENSIONS)}, got {unknown}")
        cols = [DIMENSIONS[g] for g in group_by]
        where, params = _where(since, until, filters)
        select = ", ".join(f"{c} AS {g}" for g, c in zip(group_by, cols))
        # The key's name now (a renamed key's rows carry its old names), else the one its rows last carried.
        extra_name = (", COALESCE((SELECT name FROM gov_keys WHERE gov_keys.id = gov_spend.key_id), MAX(key_name)) AS key_name"
                      if "key" in group_by else "")
        group = f" GROUP BY {', '.join(cols)}" if cols else ""
        sql = (f"SELECT {select + ', ' if select else ''}COUNT(*) AS requests, COALESCE(SUM(cost_nusd), 0) AS cost_nusd, "
               f"COALESCE(SUM(input_tokens), 0) AS input_tokens, COALESCE(SUM(output_tokens), 0) AS output_tokens{extra_name} "
               f"FROM gov_spend{where}{group} ORDER BY cost_nusd DESC")
        with self.db.read() as tx:
            rows = tx.all(sql, params)
        for r in rows:
            r["cost_usd"] = int(r.pop("cost_nusd")) / USD
            r["requests"] = int(r["requests"])
            r["input_tokens"], r["output_tokens"] = int(r["input_tokens"]), int(r["output_tokens"])
        return rows

    def csv(self, group_by: Sequence[str], since: float | None = None, until: float | None = None,
            filters: dict[str, str] | None = None) -> str:
        rows = self.spend(group_by, since, until, filters)
        out = io.StringIO()
        fields = list(group_by) + (["key_name"] if "key" in group_by else []) + ["requests", "cost_usd", "input_tokens", "output_tokens"]
        writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "cost_usd": f"{r['cost_usd']:.9f}"})
        return out.getvalue()

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.db.read() as tx:
            rows = tx.all(
                "SELECT request_id, ts, key_name, team, project, user_tag, model, profile, status, cache_status, cost_nusd, "
                "predicted_nusd, input_tokens, output_tokens, latency_s, ttft_s, reason FROM gov_spend ORDER BY ts DESC LIMIT ?",
                (limit,),
            )
        for r in rows:
            r["cost_usd"] = int(r.pop("cost_nusd")) / USD
            p = r.pop("predicted_nusd")
            r["predicted_usd"] = None if p is None else int(p) / USD
        return rows

    def summary(self, since: float | None = None) -> dict[str, Any]:
        """Totals for the dashboard: requests, spend, cache hit rate, latency and TTFT percentiles."""
        where, params = _where(since, None, None)
        with self.db.read() as tx:
            t = tx.one(f"SELECT COUNT(*) AS n, COALESCE(SUM(cost_nusd), 0) AS cost, "
                       f"SUM(CASE WHEN cache_status IN ('hit', 'semantic-hit') THEN 1 ELSE 0 END) AS hits, "
                       f"SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS errors, "
                       f"COUNT(latency_s) AS n_latency, COUNT(ttft_s) AS n_ttft FROM gov_spend{where}", params)
            lat = _percentiles(tx, "latency_s", int(t["n_latency"] or 0), where, params)
            ttft = _percentiles(tx, "ttft_s", int(t["n_ttft"] or 0), where, params)
        n = int(t["n"] or 0)
        return {
            "requests": n,
            "cost_usd": int(t["cost"] or 0) / USD,
            "cache_hit_rate": (int(t["hits"] or 0) / n) if n else None,
            "error_rate": (int(t["errors"] or 0) / n) if n else None,
            "latency_s": lat,
            "ttft_s": ttft,
        }

    def forecast(self, now: float | None = None, lookback_days: int = 14) -> dict[str, Any]:
        """Month-end spend: this month so far plus a linear trend of recent daily spend, floored at zero."""
        now = time.time() if now is None else now
        t = datetime.fromtimestamp(now, tz=timezone.utc)
        month_start = datetime(t.year, t.month, 1, tzinfo=timezone.utc).timestamp()
        days_in_month = calendar.monthrange(t.year, t.month)[1]
        today = int(now // 86400)
        first = today - lookback_days + 1
        with self.db.read() as tx:
            so_far = tx.one("SELECT COALESCE(SUM(cost_nusd), 0) AS s FROM gov_spend WHERE ts >= ? AND ts < ?", (month_start, now))
            daily_rows = tx.all("SELECT day, COALESCE(SUM(cost_nusd), 0) AS s FROM gov_spend WHERE ts >= ? GROUP BY day",
                                (first * 86400.0,))
        by_day = {r["day"]: int(r["s"]) / USD for r in daily_rows}
        days = [datetime.fromtimestamp(d * 86400, tz=timezone.utc).strftime("%Y-%m-%d") for d in range(first, today + 1)]
        seen = [i for i, d in enumerate(days) if d in by_day]
        series = [by_day.get(d, 0.0) for d in days[seen[0]:]] if seen else []
        # Today is partial: scale it to a full day so the trend is not biased down.
        elapsed = (now - today * 86400) / 86400
        if series and elapsed > 0.05:
            series[-1] = series[-1] / elapsed
        slope, intercept = _linear_fit(series)
        n = len(series)

        def rate(x: float) -> float:
            return max(0.0, intercept + slope * x)

        # The rest of today, then each day left in the month, at the trend's rate for that day.
        projected = rate(n - 1) * (1 - elapsed) if n else 0.0
        projected += sum(rate(n - 1 + j) for j in range(1, days_in_month - t.day + 1)) if n else 0.0
        spent = int(so_far["s"]) / USD
        return {
            "month": t.strftime("%Y-%m"),
            "spent_to_date_usd": spent,
            "forecast_month_end_usd": spent + projected,
            "daily_rate_usd": rate(n - 1) if n else 0.0,
            "trend_usd_per_day": slope,
            "days_observed": n,
            "method": f"least-squares line through the daily spend of the last {n} day(s), projected to month end",
        }

    def timeseries(self, dim: str, since: float | None = None, bucket_s: float | None = None) -> dict[str, Any]:
        """Spend per time bucket for each value of `dim` (model or key): the dashboard's chart.

        Without `bucket_s`, the smallest round bucket that keeps the chart within ~48 points.
        """
        # A key's series is its id's (two keys may share a name); calls without a key (the master
        # key, an open gateway) are told apart by the label their rows carry.
        col = DIMENSIONS[dim] if dim != "key" else "COALESCE(key_id, key_name)"
        where, params = _where(since, None, None)
        with self.db.read() as tx:
            if bucket_s is None:
                span = tx.one(f"SELECT MIN(ts) AS lo, MAX(ts) AS hi FROM gov_spend{where}", params)
                width = (span["hi"] - span["lo"]) if span["lo"] is not None else 0.0
                bucket_s = next((b for b in (60.0, 300.0, 900.0, 3600.0, 21600.0) if width / b <= 48), 86400.0)
            # The bucket's number, floor(ts / bucket_s), as `ts // bucket_s` has it: ts is never
            # negative, so SQLite's truncation is a floor, and a ts below a bucket's start (an exact
            # multiple of the whole seconds of bucket_s), however close, divides to less than its number.
            bucket = "CAST(ts / ? AS INTEGER)" if tx.dialect == "sqlite" else "FLOOR(ts / ?)"
            # A refused request that no model answered and that spent nothing has no series.
            kept = _and(where, f"NOT ({col} IS NULL AND cost_nusd = 0)")
            rows = tx.all(f"SELECT {bucket} AS b, {col} AS series, COALESCE(SUM(cost_nusd), 0) AS cost_nusd "
                          f"FROM gov_spend{kept} GROUP BY 1, 2", [bucket_s, *params])
            labels = _key_labels(tx, {r["series"] or "anonymous" for r in rows}) if dim == "key" else {}
        buckets: dict[float, dict[str, int]] = {}
        for r in rows:
            name = labels.get(r["series"], r["series"]) or "anonymous"
            per = buckets.setdefault(float(int(r["b"]) * bucket_s), {})
            per[name] = per.get(name, 0) + int(r["cost_nusd"])
        names = sorted({n for v in buckets.values() for n in v})
        xs = sorted(buckets)
        return {"bucket_s": bucket_s, "t": xs,
                "series": {n: [buckets[x].get(n, 0) / USD for x in xs] for n in names}}


def _key_labels(tx: Any, series: set[str]) -> dict[str, str]:
    """Each key id among `series` by its name now, with its id's start where the name is shared:
    by another key, or by a series without a key ("master", "anonymous")."""
    if not series:
        return {}
    marks = ", ".join("?" for _ in series)
    names = {r["id"]: r["name"] for r in tx.all(f"SELECT id, name FROM gov_keys WHERE id IN ({marks})", list(series))}
    shared = Counter([*names.values(), *(s for s in series if s not in names)])
    return {i: f"{n} ({i[:12]})" if shared[n] > 1 else n for i, n in names.items()}


def _percentiles(tx: Any, col: str, count: int, where: str, params: list[Any]) -> dict[str, float | None]:
    """p50 and p95 of `col`'s values: the value at rank round(p × (count − 1)) in sorted order,
    exactly, each read as one row at that offset of `col`'s index (migration 003), so that no
    value is fetched but the two answers."""
    if not count:
        return {"p50": None, "p95": None, "count": 0}
    out: dict[str, float | None] = {}
    valued = _and(where, f"{col} IS NOT NULL")
    for name, p in (("p50", 0.5), ("p95", 0.95)):
        rank = min(count - 1, int(round(p * (count - 1))))
        # Walk the index from whichever end is nearer.
        order, offset = ("ASC", rank) if rank <= (count - 1) // 2 else ("DESC", count - 1 - rank)
        row = tx.one(f"SELECT {col} AS v FROM gov_spend{valued} "
                     f"ORDER BY {col} {order} LIMIT 1 OFFSET ?", [*params, offset])
        out[name] = row["v"]
    return {**out, "count": count}


def _linear_fit(ys: list[float]) -> tuple[float, float]:
    n = len(ys)
    if n == 0:
        return 0.0, 0.0
    if n == 1:
        return 0.0, ys[0]
    mx, my = (n - 1) / 2, sum(ys) / n
    sxx = sum((i - mx) ** 2 for i in range(n))
    slope = sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sxx
    return slope, my - slope * mx
