// OpenClaw Router dashboard: reads /admin/dashboard with the master key, draws with inline SVG.
// Every value from the server goes in through textContent or SVG attributes, never as HTML.
"use strict";

const KEY_SLOT = "openclaw.master";
const COLORS = ["#2f6fed", "#e8793a", "#2aa876", "#a35bd6", "#d33c3c", "#2bb3c0", "#c9a227", "#7a8599", "#e05c9b", "#5b8c2a"];
const SVG = "http://www.w3.org/2000/svg";

function $(id) { return document.getElementById(id); }

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    // Through CSSOM, which the page's CSP allows; a style attribute would be blocked.
    if (k === "style") node.style.cssText = String(v);
    else node.setAttribute(k, String(v));
  }
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function usd(x) {
  if (x === null || x === undefined) return "–";
  if (x === 0) return "$0";
  if (Math.abs(x) >= 100) return "$" + x.toFixed(0);
  if (Math.abs(x) >= 1) return "$" + x.toFixed(2);
  return "$" + x.toPrecision(3);
}
function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; }
function secs(x) { return x === null || x === undefined ? "–" : x < 1 ? (1000 * x).toFixed(0) + " ms" : x.toFixed(2) + " s"; }
function when(ts) { return new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19); }

function takeKeyFromFragment() {
  // The fragment never reaches the server or its logs; drop it from the address bar at once.
  const m = location.hash.match(/key=([^&]+)/);
  if (m) {
    sessionStorage.setItem(KEY_SLOT, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

let probed = false;

async function fetchDashboard() {
  const key = sessionStorage.getItem(KEY_SLOT);
  if (!key && probed) return { login: true };
  // Asked once without a key too: a gateway with no master key answers 403 admin_disabled, and
  // the page says so instead of asking for a key that does not exist.
  probed = true;
  const resp = await fetch("/admin/dashboard", key ? { headers: { authorization: "Bearer " + key } } : {});
  const body = await resp.json().catch(() => ({}));
  if (resp.status === 403 && body.error && body.error.code === "admin_disabled") return { adminOff: true };
  if (!key) return { login: true };
  if (!resp.ok) return { login: true, error: (body.error && body.error.message) || resp.statusText };
  return { data: body };
}

const BUCKETS = { 60: "minute", 300: "5 minutes", 900: "15 minutes", 3600: "hour", 21600: "6 hours", 86400: "day" };

// The server lists only buckets that spent something; a gap is zero spend, and drawn any other
// way the chart would join the spend before and after it as if time had not passed.
function filledBuckets(chart) {
  const step = chart.bucket_s, t = chart.t;
  if (!t.length || !step || (t[t.length - 1] - t[0]) / step > 2000) return chart;
  const ts = [];
  for (let v = t[0]; v <= t[t.length - 1] + step / 2; v += step) ts.push(v);
  const at = new Map(t.map((v, i) => [Math.round(v / step), i]));
  const series = {};
  for (const [name, values] of Object.entries(chart.series)) {
    series[name] = ts.map((v) => { const i = at.get(Math.round(v / step)); return i === undefined ? 0 : values[i]; });
  }
  return { bucket_s: step, t: ts, series };
}

// Round tick steps (1, 2, 2.5, 5 × 10^k): ticks at a quarter of an odd maximum read $0.0477.
function niceTicks(max) {
  const raw = max / 4, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let k = 0; k * step < max + step * 1e-9; k++) ticks.push(Number((k * step).toPrecision(12)));
  if (ticks[ticks.length - 1] < max) ticks.push(Number((ticks.length * step).toPrecision(12)));
  return ticks;
}
function tickUsd(v) { return v === 0 ? "$0" : "$" + String(Number(v.toPrecision(3))); }

function lineChart(target, chart) {
  target.replaceChildren();
  const { series, t: tsList, bucket_s: step } = filledBuckets(chart);
  const names = Object.keys(series);
  const W = 600, H = 220, L = 56, R = 8, T = 18, B = 24;
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  if (!tsList.length) {
    svg.appendChild(el("svg:text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#6b7385" }, "no spend yet"));
    target.appendChild(svg);
    return;
  }
  // Stacked areas: the top edge is the total spend per time bucket.
  const totals = tsList.map((_, i) => names.reduce((s, n) => s + series[n][i], 0));
  const ticks = niceTicks(Math.max(...totals) || 1);
  const ymax = ticks[ticks.length - 1];
  const x = (i) => L + (tsList.length === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (tsList.length - 1));
  const y = (v) => H - B - (v / ymax) * (H - T - B);
  ticks.forEach((v) => {
    svg.appendChild(el("svg:line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e3e6ee" }));
    svg.appendChild(el("svg:text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", "font-size": 10, fill: "#6b7385", class: "tick" }, tickUsd(v)));
  });
  const unit = BUCKETS[step] || `${step} s`;
  svg.appendChild(el("svg:text", { x: L, y: 10, "font-size": 10, fill: "#6b7385", class: "unit" }, `USD per ${unit}`));
  const base = tsList.map(() => 0);
  names.forEach((name, j) => {
    const top = base.map((b, i) => b + series[name][i]);
    let d = "";
    if (tsList.length === 1) {
      const bar = el("svg:rect", { x: x(0) - 20, width: 40, y: y(top[0]), height: y(base[0]) - y(top[0]), fill: COLORS[j % COLORS.length] });
      bar.appendChild(el("svg:title", {}, `${name}: ${usd(series[name][0])}`));
      svg.appendChild(bar);
    } else {
      top.forEach((v, i) => { d += (i ? "L" : "M") + x(i).toFixed(1) + "," + y(v).toFixed(1); });
      for (let i = base.length - 1; i >= 0; i--) d += "L" + x(i).toFixed(1) + "," + y(base[i]).toFixed(1);
      const area = el("svg:path", { d: d + "Z", fill: COLORS[j % COLORS.length], "fill-opacity": 0.75 });
      area.appendChild(el("svg:title", {}, name));
      svg.appendChild(area);
    }
    top.forEach((v, i) => { base[i] = v; });
  });
  svg.appendChild(el("svg:text", { x: L, y: H - 6, "font-size": 10, fill: "#6b7385" }, when(tsList[0]) + " UTC"));
  svg.appendChild(el("svg:text", { x: W - R, y: H - 6, "font-size": 10, fill: "#6b7385", "text-anchor": "end" }, when(tsList[tsList.length - 1]) + " UTC"));
  target.appendChild(svg);
  const legend = el("div", { class: "legend" });
  names.forEach((name, j) => {
    const total = series[name].reduce((a, b) => a + b, 0);
    const item = el("span", { "data-series": name });
    item.appendChild(el("i", { style: `background:${COLORS[j % COLORS.length]}` }));
    item.appendChild(document.createTextNode(`${name} ${usd(total)}`));
    legend.appendChild(item);
  });
  target.appendChild(legend);
}

function barRow(label, share, right, cls, softAt) {
  const row = el("div", { class: "bar-row" });
  row.appendChild(el("span", {}, label));
  const bar = el("div", { class: "bar" });
  bar.appendChild(el("span", { class: cls || "", style: `width:${Math.min(100, 100 * share).toFixed(1)}%` }));
  if (softAt) bar.appendChild(el("span", { class: "soft", style: `left:${(100 * softAt).toFixed(1)}%`, title: "soft threshold" }));
  row.appendChild(bar);
  row.appendChild(el("span", { class: "num" }, right));
  return row;
}

// The gateway refuses a request once a budget's room (limit less spent and reserved) is below the
// request's predicted cost, but /admin/dashboard reports neither that prediction nor whether a
// budget is refusing. So a budget within the last 0.1% of its limit is shown spent: that close,
// it refuses nearly every request, and "100.0%" in the warning colour read as still admitting.
const EXHAUSTED_AT = 0.999;

function budgetRow(b) {
  const used = (b.spent_usd + (b.reserved_usd || 0)) / b.limit_usd;
  const [cls, state] = used >= EXHAUSTED_AT ? ["bad", "exhausted: refusing requests"]
    : b.share >= b.soft_threshold ? ["warn", "past its soft threshold"] : ["", ""];
  const row = barRow(b.label, b.share, `${usd(b.spent_usd)} / ${usd(b.limit_usd)} · ${pct(b.share)}`, cls, b.soft_threshold);
  row.classList.add("budget-row");
  // The label on a line of its own: it names the key by name and id, too long for the bar's column.
  const head = el("div", { class: "head" });
  head.append(row.firstChild, el("span", { class: `state ${cls}` }, state));
  row.prepend(head);
  row.setAttribute("data-budget", b.id);
  if (cls) row.setAttribute("data-state", cls);
  if (b.projected_window_end_usd !== null) row.title = `on track for ${usd(b.projected_window_end_usd)} by ${b.window} end`;
  return row;
}

function render(d) {
  const s = d.summary;
  $("t-requests").textContent = s.requests;
  $("t-cost").textContent = usd(s.cost_usd);
  $("t-forecast").textContent = usd(d.forecast.forecast_month_end_usd);
  // How it was made, so a forecast from a day's data is not read like one from a month's.
  $("t-forecast-method").textContent = d.forecast.method || "";
  $("forecast-tile").title = d.forecast.method || "";
  $("t-cache").textContent = pct(s.cache_hit_rate);
  $("t-latency").textContent = `${secs(s.latency_s.p50)} / ${secs(s.latency_s.p95)}`;
  $("t-ttft").textContent = `${secs(s.ttft_s.p50)} / ${secs(s.ttft_s.p95)}`;
  $("t-errors").textContent = pct(s.error_rate);

  lineChart($("chart-model"), d.spend_by_model);
  lineChart($("chart-key"), d.spend_by_key);

  const routing = $("routing");
  routing.replaceChildren();
  const total = d.routing.reduce((a, r) => a + r.requests, 0) || 1;
  // By requests, what the bars measure (the server orders by spend).
  [...d.routing].sort((a, b) => b.requests - a.requests).forEach((r) => routing.appendChild(
    barRow(r.model || "no model answered", r.requests / total, `${r.requests} req · ${usd(r.cost_usd)}`)));

  const budgets = $("budgets");
  budgets.replaceChildren();
  if (!d.budgets.length) budgets.appendChild(el("p", { class: "muted" }, "no budgets set"));
  d.budgets.forEach((b) => budgets.appendChild(budgetRow(b)));

  const tbody = $("recent").querySelector("tbody");
  tbody.replaceChildren();
  d.recent.forEach((r) => {
    const tr = el("tr", { "data-request": r.request_id });
    [when(r.ts), r.key_name || "–", r.model || "–", r.status, usd(r.cost_usd), secs(r.latency_s), secs(r.ttft_s), r.cache_status || "–"]
      .forEach((v) => tr.appendChild(el("td", {}, v)));
    tr.appendChild(el("td", { class: "reason" }, r.reason || ""));
    tbody.appendChild(tr);
  });

  const alerts = $("alerts");
  alerts.replaceChildren();
  if (!d.alerts.length) alerts.appendChild(el("li", { class: "muted" }, "no alerts"));
  d.alerts.forEach((a) => alerts.appendChild(el("li", {}, `${when(a.fired_at)} · ${a.kind} · ${a.message}`)));

  $("status").textContent = "updated " + when(d.generated_at) + " UTC";
  document.body.setAttribute("data-rendered", "true");
}

async function refresh() {
  try {
    const result = await fetchDashboard();
    if (result.adminOff) {
      // Only a restart with OPENCLAW_MASTER_KEY changes this: no point polling.
      clearInterval(timer);
      $("board").hidden = true;
      $("logout").hidden = true;
      $("login").hidden = true;
      $("admin-off").hidden = false;
      $("status").textContent = "admin API disabled: OPENCLAW_MASTER_KEY is not set";
      return;
    }
    if (result.login) {
      $("board").hidden = true;
      $("logout").hidden = true;
      $("login").hidden = false;
      $("login-error").textContent = result.error || "";
      $("status").textContent = "master key needed";
      return;
    }
    $("login").hidden = true;
    $("board").hidden = false;
    $("logout").hidden = false;
    render(result.data);
  } catch (err) {
    $("status").textContent = "cannot reach the gateway: " + err.message;
  }
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY_SLOT, $("master").value);
  $("master").value = "";
  refresh();
});
$("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY_SLOT); refresh(); });

takeKeyFromFragment();
const timer = setInterval(refresh, 15000);
refresh();
