// troupe's dashboard: plain JavaScript over uPlot (loaded just before this
// file, in the same bundle). It reads the live feed GET /v1/stream (Server-
// Sent Events read with fetch, so the token travels in the Authorization
// header) and the JSON API: /v1/metrics/history, /v1/alerts/silences,
// /v1/failed, /v1/config. Built into routes/_dashboard_assets.ts by
// scripts/build_dashboard.ts.
/* global uPlot */
(() => {
  "use strict";

  const TOKEN_KEY = "troupe.token";
  const LIVE_WINDOW_S = 15 * 60;
  const STAGES = ["validate", "transform", "aggregate", "store"];
  const RESTART_MARK_MS = 60_000;
  const RANGES = {
    "1h": { ms: 3_600_000, step: "1m", label: "last hour, 1-minute means" },
    "24h": { ms: 86_400_000, step: "5m", label: "last 24 hours, 5-minute means" },
    "7d": { ms: 7 * 86_400_000, step: "30m", label: "last 7 days, 30-minute means" },
  };

  // Okabe–Ito colours, each with its own dash pattern: colour is not the only cue.
  const PALETTE = [
    { color: "#0072B2", dash: undefined },
    { color: "#E69F00", dash: [8, 4] },
    { color: "#009E73", dash: [2, 3] },
    { color: "#CC79A7", dash: [12, 3, 3, 3] },
    { color: "#D55E00", dash: [4, 4] },
    { color: "#56B4E9", dash: [1, 2] },
  ];
  const style = (i) => PALETTE[i % PALETTE.length];

  const MiB = 1024 * 1024;
  const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800]
    .concat([21600, 43200, 86400, 172800, 604800]);
  const num = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const int = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const fmt = (v, digits = 1) =>
    v == null || !Number.isFinite(v)
      ? "–"
      : new Intl.NumberFormat(undefined, { maximumFractionDigits: digits }).format(v);

  /** Charts: each series names a history series, or a function of the sample row. */
  const STAGE_SERIES = (prefix) =>
    STAGES.map((s, i) => ({ key: prefix + s, label: s, ...style(i) }));
  const CHARTS = [
    {
      id: "records",
      title: "Records per second",
      unit: "/s",
      series: [
        { key: "records_accepted_per_second", label: "accepted", color: "#009E73", width: 2.25 },
        { key: "records_duplicate_per_second", label: "duplicate", ...style(1) },
        { key: "records_rejected_per_second", label: "rejected", color: "#D55E00", dash: [2, 3] },
      ],
    },
    {
      id: "latency",
      title: "Request latency",
      unit: " ms",
      series: [
        { key: "ingest_latency_p50_ms", label: "p50", ...style(0) },
        { key: "ingest_latency_p99_ms", label: "p99", ...style(1) },
      ],
    },
    {
      id: "mailbox",
      title: "Mailbox depth per stage",
      unit: " records",
      series: STAGE_SERIES("mailbox_depth_"),
    },
    { id: "workers", title: "Workers per stage", unit: "", series: STAGE_SERIES("workers_") },
    { id: "cpu", title: "CPU", unit: " %", series: null /* from the cores present */ },
    {
      id: "memory",
      title: "Memory",
      unit: " MiB",
      series: [
        { key: "rss_bytes", label: "RSS", scale: 1 / MiB, ...style(0) },
        { key: "heap_used_bytes", label: "heap used", scale: 1 / MiB, ...style(1) },
        { key: "heap_total_bytes", label: "heap total", scale: 1 / MiB, ...style(2) },
      ],
    },
    {
      id: "lag",
      title: "Event-loop lag p99",
      unit: " ms",
      series: [{ key: "eventloop_lag_p99_seconds", label: "lag p99", scale: 1000, ...style(4) }],
    },
  ];

  function cpuSeries(names) {
    const cores = names.filter((n) => /^cpu_core_\d+$/.test(n))
      .sort((a, b) => Number(a.slice(9)) - Number(b.slice(9)));
    return [
      {
        key: "process_cpu",
        sum: ["process_cpu_user", "process_cpu_system"],
        label: "troupe process",
        scale: 100,
        width: 2.5,
        ...style(4),
      },
      ...cores.map((n, i) => ({ key: n, label: `core ${n.slice(9)}`, scale: 100, ...style(i) })),
    ];
  }

  // ---------------------------------------------------------------- DOM helpers

  const $ = (id) => document.getElementById(id);
  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }
  const timeText = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
  const shortTime = (iso) =>
    iso ? new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "–";

  // ---------------------------------------------------------------- API and token

  let tokenPrompt = null;

  function authHeaders(extra = {}) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { ...extra, authorization: `Bearer ${token}` } : extra;
  }

  /** Shows the token dialog once, however many requests are waiting for it. */
  function askToken(message) {
    tokenPrompt ??= new Promise((resolve) => {
      const dialog = $("token-dialog");
      const error = $("token-error");
      error.hidden = !message;
      error.textContent = message ?? "";
      const form = $("token-form");
      const onSubmit = (event) => {
        event.preventDefault();
        const value = $("token-input").value.trim();
        if (value.length < 16) {
          error.hidden = false;
          error.textContent = "A token has at least 16 characters.";
          return;
        }
        sessionStorage.setItem(TOKEN_KEY, value);
        form.removeEventListener("submit", onSubmit);
        dialog.close();
        tokenPrompt = null;
        resolve();
      };
      form.addEventListener("submit", onSubmit);
      if (!dialog.open) dialog.showModal();
      $("token-input").focus();
    });
    return tokenPrompt;
  }

  /** fetch for /v1/*: adds the token, asks for one on 401, answers parsed JSON. */
  async function api(path, options = {}) {
    for (;;) {
      const res = await fetch(path, {
        ...options,
        headers: authHeaders(options.headers ?? {}),
      });
      if (res.status === 401) {
        const had = sessionStorage.getItem(TOKEN_KEY);
        sessionStorage.removeItem(TOKEN_KEY);
        await askToken(had ? "That token was refused: try again." : undefined);
        continue;
      }
      if (res.status === 204) return null;
      const body = await res.json().catch(() => null);
      if (!res.ok) {
        const message = body?.error?.message ?? `${res.status} ${res.statusText}`;
        throw new Error(message);
      }
      return body;
    }
  }

  // ---------------------------------------------------------------- Live data

  const live = { t: [], series: {} };
  let names = [];

  function appendSamples(cols) {
    const n = live.t.length;
    for (const t of cols.t) live.t.push(t);
    const keys = new Set([...Object.keys(live.series), ...Object.keys(cols.series)]);
    for (const k of keys) {
      const col = (live.series[k] ??= new Array(n).fill(null));
      const add = cols.series[k] ?? new Array(cols.t.length).fill(null);
      for (const v of add) col.push(v);
    }
    // Keep the 15-minute window.
    const cut = live.t.findIndex((t) => t >= live.t[live.t.length - 1] - LIVE_WINDOW_S * 1000);
    if (cut > 0) {
      live.t.splice(0, cut);
      for (const col of Object.values(live.series)) col.splice(0, cut);
    }
    names = Object.keys(live.series);
  }

  function latest(key) {
    const col = live.series[key];
    if (!col) return null;
    for (let i = col.length - 1; i >= 0; i--) if (col[i] != null) return col[i];
    return null;
  }

  function updateFigures() {
    const rate = latest("records_accepted_per_second");
    const rateEl = $("fig-rate");
    rateEl.textContent = rate == null ? "–" : int.format(rate);
    rateEl.dataset.value = String(rate ?? 0);
    const p99 = latest("ingest_latency_p99_ms");
    $("fig-p99").textContent = p99 == null ? "–" : `${num.format(p99)} ms`;
    const rss = latest("rss_bytes");
    $("fig-rss").textContent = rss == null ? "–" : `${int.format(rss / MiB)} MiB`;
  }

  // ---------------------------------------------------------------- Charts

  const charts = new Map();
  let range = "live";

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function chartWidth(figure) {
    return Math.max(240, Math.floor(figure.clientWidth - 2));
  }

  function seriesOf(def) {
    return def.series ?? cpuSeries(names);
  }

  function makeChart(def) {
    const grid = $("chart-grid");
    let figure = $(`chart-${def.id}`);
    if (!figure) {
      figure = el(
        "figure",
        { class: "chart", id: `chart-${def.id}`, "aria-labelledby": `chart-${def.id}-title` },
        el("figcaption", { id: `chart-${def.id}-title`, text: def.title }),
      );
      grid.append(figure);
    }
    charts.get(def.id)?.destroy();
    const axis = cssVar("--muted") || "#666";
    const gridColor = cssVar("--grid") || "rgba(128,128,128,0.2)";
    const series = seriesOf(def);
    const u = new uPlot(
      {
        width: chartWidth(figure),
        height: 190,
        cursor: { sync: { key: "troupe", setSeries: false }, drag: { x: true, y: false } },
        scales: {
          x: { time: true },
          y: { range: (_u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 1] },
        },
        legend: { live: true },
        hooks: {
          // Off the chart, the legend shows the latest values rather than dashes.
          setCursor: [(self) => {
            if (self.cursor.idx == null) queueMicrotask(() => showLatest(self));
          }],
        },
        series: [
          {
            label: "time",
            value: (_u, ts) => (ts == null ? "–" : new Date(ts * 1000).toLocaleTimeString()),
          },
          ...series.map((s) => ({
            label: s.label,
            stroke: s.color,
            width: s.width ?? 1.75,
            dash: s.dash,
            points: { show: false },
            value: (_u, v) => (v == null ? "–" : fmt(v, 2) + def.unit),
          })),
        ],
        axes: [
          {
            stroke: axis,
            grid: { stroke: gridColor, width: 1 },
            ticks: { stroke: gridColor },
            // Whole seconds at least: samples come once a second.
            incrs: TIME_INCRS,
          },
          {
            stroke: axis,
            grid: { stroke: gridColor, width: 1 },
            ticks: { stroke: gridColor },
            size: 56,
            values: (_u, vals) => vals.map((v) => fmt(v, 2)),
          },
        ],
      },
      dataFor(series),
      figure,
    );
    u.troupeSeries = series.map((s) => s.key).join(",");
    charts.set(def.id, u);
    showLatest(u);
    return u;
  }

  function showLatest(u) {
    const n = u.data[0].length;
    if (n > 0 && u.cursor.idx == null) u.setLegend({ idx: n - 1 });
  }

  /** uPlot's columns for a chart from a `{t, series}` table. */
  function dataFor(series, table = live) {
    const xs = table.t.map((t) => t / 1000);
    const cols = series.map((s) => {
      const get = s.sum
        ? (i) => {
          let total = null;
          for (const k of s.sum) {
            const v = table.series[k]?.[i];
            if (v != null) total = (total ?? 0) + v;
          }
          return total;
        }
        : (i) => table.series[s.key]?.[i] ?? null;
      return xs.map((_, i) => {
        const v = get(i);
        return v == null ? null : v * (s.scale ?? 1);
      });
    });
    return [xs, ...cols];
  }

  function drawLive() {
    if (range !== "live") return;
    for (const def of CHARTS) {
      const series = seriesOf(def);
      let u = charts.get(def.id);
      if (!u || u.troupeSeries !== series.map((s) => s.key).join(",")) u = makeChart(def);
      else {
        u.setData(dataFor(series));
        showLatest(u);
      }
    }
  }

  async function drawHistory(which) {
    const r = RANGES[which];
    const to = Date.now();
    const from = to - r.ms;
    $("range-note").textContent = `Loading the ${r.label}…`;
    const wanted = new Set();
    for (const def of CHARTS) {
      for (const s of seriesOf(def)) for (const k of s.sum ?? [s.key]) wanted.add(k);
    }
    const table = { t: [], series: {} };
    const byTime = new Map();
    // Only the series the server has, so that no request answers 404.
    const known = new Set((await api("/v1/metrics/history")).series);
    const results = await Promise.all(
      [...wanted].filter((n) => known.has(n)).map(async (name) => {
        try {
          const body = await api(
            `/v1/metrics/history?name=${
              encodeURIComponent(name)
            }&from=${from}&to=${to}&step=${r.step}`,
          );
          return [name, body.points];
        } catch {
          return [name, []];
        }
      }),
    );
    if (range !== which) return;
    for (const [, points] of results) for (const p of points) byTime.set(p.t, true);
    table.t = [...byTime.keys()].sort((a, b) => a - b);
    const index = new Map(table.t.map((t, i) => [t, i]));
    for (const [name, points] of results) {
      const col = new Array(table.t.length).fill(null);
      for (const p of points) col[index.get(p.t)] = p.mean;
      table.series[name] = col;
    }
    for (const def of CHARTS) {
      const series = seriesOf(def);
      let u = charts.get(def.id);
      if (!u || u.troupeSeries !== series.map((s) => s.key).join(",")) u = makeChart(def);
      u.setData(dataFor(series, table));
      showLatest(u);
    }
    $("range-note").textContent = table.t.length === 0
      ? `No history kept for the ${r.label} yet.`
      : `Showing the ${r.label} (${table.t.length} points). Drag across a chart to zoom.`;
  }

  function setRange(which) {
    range = which;
    for (const b of document.querySelectorAll(".range button")) {
      b.setAttribute("aria-pressed", String(b.dataset.range === which));
    }
    if (which === "live") {
      $("range-note").textContent = "Live: the last 15 minutes, one sample per second.";
      for (const u of charts.values()) u.destroy();
      charts.clear();
      drawLive();
    } else {
      drawHistory(which);
    }
  }

  function watchSizes() {
    const grid = $("chart-grid");
    let pending = false;
    new ResizeObserver(() => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        for (const [id, u] of charts) {
          const figure = $(`chart-${id}`);
          if (figure) u.setSize({ width: chartWidth(figure), height: 190 });
        }
      });
    }).observe(grid);
  }

  // ---------------------------------------------------------------- Status

  function showStatus(s) {
    const ready = $("ready");
    ready.dataset.state = s.ready ? "ok" : "bad";
    const failing = (s.checks ?? []).filter((c) => !c.ok).map((c) => c.message ?? c.name);
    ready.replaceChildren(
      el("span", { "aria-hidden": "true", text: s.ready ? "✔" : "✖" }),
      ` ${s.ready ? "Ready" : "Not ready"}`,
    );
    ready.title = failing.join("; ");
    if (s.version) $("version").textContent = `v${s.version}`;
    capacities = s.stages ?? capacities;
  }
  let capacities = {};

  function showConnection(state) {
    const conn = $("conn");
    conn.dataset.state = state;
    const [icon, text] = {
      live: ["●", "Live"],
      connecting: ["…", "Connecting"],
      retrying: ["↻", "Reconnecting"],
    }[state];
    conn.replaceChildren(el("span", { "aria-hidden": "true", text: icon }), ` ${text}`);
  }

  // ---------------------------------------------------------------- Alerts

  // Glyphs every common font has (DejaVu included): no emoji.
  const SEVERITY = {
    critical: { icon: "✖", rank: 0 },
    warning: { icon: "▲", rank: 1 },
    info: { icon: "ℹ", rank: 2 },
  };
  const alertItems = new Map();

  function severityBadge(sev) {
    return el(
      "span",
      { class: `sev sev-${sev}` },
      el("span", { "aria-hidden": "true", text: SEVERITY[sev]?.icon ?? "•" }),
      ` ${sev}`,
    );
  }

  function stateBadge(state) {
    const icon = { firing: "●", pending: "◔", resolved: "✔" }[state] ?? "";
    return el(
      "span",
      { class: `state state-${state}` },
      el("span", { "aria-hidden": "true", text: icon }),
      ` ${state}`,
    );
  }

  async function silence(alert, duration, button) {
    button.disabled = true;
    try {
      await api("/v1/alerts/silences", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          alertname: alert.name,
          duration,
          comment: "Silenced from the dashboard",
        }),
      });
      await refreshAlerts();
    } catch (error) {
      button.closest("li")?.querySelector(".alert-error")?.replaceChildren(String(error.message));
    } finally {
      button.disabled = false;
    }
  }

  async function unsilence(ids, button) {
    button.disabled = true;
    try {
      for (const id of ids) {
        await api(`/v1/alerts/silences/${encodeURIComponent(id)}`, { method: "DELETE" });
      }
      await refreshAlerts();
    } finally {
      button.disabled = false;
    }
  }

  /** One alert item; kept across updates so focus and the chosen duration survive. */
  function alertItem(a) {
    let item = alertItems.get(a.id);
    if (!item) {
      const duration = el(
        "select",
        { "aria-label": `Silence ${a.name} for` },
        el("option", { value: "15m", text: "15 minutes" }),
        el("option", { value: "1h", text: "1 hour", selected: true }),
        el("option", { value: "4h", text: "4 hours" }),
        el("option", { value: "24h", text: "1 day" }),
        el("option", { value: "7d", text: "7 days" }),
      );
      const silenceButton = el("button", { type: "button", class: "silence", text: "Silence" });
      const liftButton = el("button", { type: "button", class: "lift", text: "Lift silence" });
      const li = el("li", { class: "alert", "data-alert": a.name });
      li.append(
        el("div", { class: "alert-head" }),
        el("p", { class: "alert-summary" }),
        el("p", { class: "alert-description muted" }),
        el("dl", { class: "alert-facts" }),
        el("div", { class: "alert-actions-box" }),
        el(
          "div",
          { class: "silence-controls" },
          el("label", {}, "Silence for ", duration),
          silenceButton,
          liftButton,
          el("span", { class: "alert-error error", role: "alert" }),
        ),
      );
      item = { li, duration, silenceButton, liftButton, alert: a };
      silenceButton.addEventListener(
        "click",
        () => silence(item.alert, duration.value, silenceButton),
      );
      liftButton.addEventListener("click", () => unsilence(item.alert.silenced_by, liftButton));
      alertItems.set(a.id, item);
    }
    item.alert = a;
    const li = item.li;
    li.dataset.state = a.state;
    li.dataset.severity = a.severity;
    li.dataset.silenced = String(a.silenced);
    const head = li.querySelector(".alert-head");
    head.replaceChildren(
      severityBadge(a.severity),
      el("strong", { class: "alert-name", text: a.name }),
      stateBadge(a.state),
      ...(a.silenced
        ? [el(
          "span",
          { class: "badge silenced" },
          el("span", { "aria-hidden": "true", text: "⊘" }),
          " silenced",
        )]
        : []),
    );
    li.querySelector(".alert-summary").textContent = a.summary;
    li.querySelector(".alert-description").textContent = a.description;
    li.querySelector(".alert-facts").replaceChildren(
      el("dt", { text: "Value" }),
      el("dd", { text: a.value == null ? "–" : fmt(a.value, 3) }),
      el("dt", { text: a.state === "resolved" ? "From – to" : "Since" }),
      el("dd", {
        text: a.state === "resolved"
          ? `${timeText(a.starts_at)} – ${timeText(a.ends_at)}`
          : timeText(a.starts_at),
      }),
    );
    const actions = li.querySelector(".alert-actions-box");
    const signature = JSON.stringify(a.suggested_actions);
    if (actions.dataset.signature !== signature) {
      actions.dataset.signature = signature;
      actions.replaceChildren(
        ...(a.suggested_actions.length === 0 ? [] : [
          el("p", { class: "actions-title", text: "Suggested actions" }),
          el(
            "ul",
            { class: "alert-actions" },
            ...a.suggested_actions.map((s) => el("li", { text: s })),
          ),
        ]),
      );
    }
    const controls = li.querySelector(".silence-controls");
    controls.hidden = a.state === "resolved";
    item.silenceButton.hidden = a.silenced;
    item.duration.closest("label").hidden = a.silenced;
    item.liftButton.hidden = !a.silenced;
    return li;
  }

  function showAlerts(data) {
    const order = (a, b) =>
      (SEVERITY[a.severity]?.rank ?? 9) - (SEVERITY[b.severity]?.rank ?? 9) ||
      (a.state === b.state ? 0 : a.state === "firing" ? -1 : 1) ||
      a.starts_at.localeCompare(b.starts_at);
    const active = [...data.active].sort(order);
    const list = $("alerts-active");
    const items = active.map(alertItem);
    // Move only what moved, so a focused control keeps its focus.
    items.forEach((li, i) => {
      if (list.children[i] !== li) list.insertBefore(li, list.children[i] ?? null);
    });
    while (list.children.length > items.length) list.lastElementChild.remove();
    const ids = new Set(active.map((a) => a.id));
    for (const id of alertItems.keys()) if (!ids.has(id)) alertItems.delete(id);
    $("alerts-empty").hidden = active.length > 0;
    $("fig-alerts").textContent = String(active.filter((a) => a.state === "firing").length);

    $("alerts-resolved-count").textContent = String(data.resolved.length);
    $("alerts-resolved").replaceChildren(
      ...data.resolved.slice(0, 20).map((a) =>
        el(
          "li",
          { class: "alert", "data-state": "resolved", "data-severity": a.severity },
          el(
            "div",
            { class: "alert-head" },
            severityBadge(a.severity),
            el("strong", { class: "alert-name", text: a.name }),
            stateBadge("resolved"),
          ),
          el("p", { class: "alert-summary", text: a.summary }),
          el("p", {
            class: "muted",
            text: `${timeText(a.starts_at)} – ${timeText(a.ends_at)} · last value ${
              fmt(a.value, 3)
            }`,
          }),
        )
      ),
    );

    const silences = data.silences ?? [];
    $("silences-empty").hidden = silences.length > 0;
    $("silences").replaceChildren(...silences.map((s) => {
      const lift = el("button", { type: "button", text: "Lift" });
      lift.addEventListener("click", () => unsilence([s.id], lift));
      const what = Object.entries(s.matchers).map(([k, v]) => `${k}="${v}"`).join(", ") +
        (s.alert_id ? ` (alert ${s.alert_id})` : "");
      return el(
        "li",
        {},
        el("span", { "aria-hidden": "true", text: "⊘ " }),
        el("code", { text: what }),
        ` until ${shortTime(s.ends_at)}`,
        s.comment ? el("span", { class: "muted", text: ` — ${s.comment}` }) : null,
        " ",
        lift,
      );
    }));
  }

  async function refreshAlerts() {
    const [alerts, silences] = await Promise.all([
      api("/v1/alerts"),
      api("/v1/alerts/silences"),
    ]);
    showAlerts({
      active: alerts.active,
      resolved: alerts.resolved,
      silences: silences.silences.filter((s) => s.state === "active"),
    });
  }

  // ---------------------------------------------------------------- Actors

  // Restart counts seen at the last update: of each actor, and the highest among each one's
  // children. A restarted worker comes back under a new id with its pool's count one higher;
  // a worker the autoscaler adds comes with the same count as its siblings.
  let restartSeen = new Map();
  let childMaxSeen = new Map();
  let restartedAt = new Map();
  let restartNow = { seen: new Map(), childMax: new Map() };

  function actorNode(node, path, parentMaxBefore) {
    const key = `${path}/${node.id}`;
    const before = restartSeen.get(key);
    const restarted = before !== undefined
      ? node.restarts > before
      : parentMaxBefore !== undefined && node.restarts > parentMaxBefore;
    if (restarted) restartedAt.set(key, Date.now());
    restartNow.seen.set(key, node.restarts);
    if (node.children.length > 0) {
      restartNow.childMax.set(key, Math.max(...node.children.map((c) => c.restarts)));
    }
    const recently = Date.now() - (restartedAt.get(key) ?? 0) < RESTART_MARK_MS;
    const row = el(
      "div",
      { class: "node", "data-actor": node.id, "data-restarted": String(recently) },
      el("span", { class: "actor-id", text: node.id }),
      el("span", { class: "actor-type muted", text: node.type }),
      el("span", { class: "actor-state", text: stateText(node.state) }),
    );
    if (node.mailbox) {
      const { depth, capacity } = node.mailbox;
      row.append(el(
        "span",
        { class: "mailbox" },
        el("meter", {
          min: 0,
          max: Math.max(1, capacity),
          value: depth,
          high: capacity * 0.75,
          optimum: 0,
          "aria-label": `${node.id} mailbox fill`,
        }),
        el("span", {
          class: "mailbox-text",
          text: `${int.format(depth)} / ${int.format(capacity)}`,
        }),
      ));
    }
    if (node.restarts > 0) {
      row.append(el("span", { class: "restarts", text: `restarts ${node.restarts}` }));
    }
    if (recently) {
      row.append(
        el(
          "span",
          { class: "badge restarted" },
          el("span", { "aria-hidden": "true", text: "↻" }),
          " restarted",
        ),
      );
    }
    const li = el("li", {}, row);
    if (node.children.length > 0) {
      const maxBefore = childMaxSeen.get(key);
      li.append(el("ul", {}, ...node.children.map((c) => actorNode(c, key, maxBefore))));
    }
    return li;
  }

  /** `{"clock":"waiting","alert":{"firing":"holding"}}` → `clock: waiting · alert: firing.holding`. */
  function stateText(state) {
    if (!state.startsWith("{")) return state;
    const path = (v) =>
      typeof v === "string" ? v : Object.entries(v).map(([k, w]) => `${k}.${path(w)}`).join(", ");
    try {
      return Object.entries(JSON.parse(state)).map(([k, v]) => `${k}: ${path(v)}`).join(" · ");
    } catch {
      return state;
    }
  }

  function countNodes(n) {
    return 1 + n.children.reduce((s, c) => s + countNodes(c), 0);
  }

  function showActors(tree) {
    restartNow = { seen: new Map(), childMax: new Map() };
    $("actor-tree").replaceChildren(el("ul", { class: "tree-root" }, actorNode(tree, "")));
    // Forget the actors that are gone.
    restartSeen = restartNow.seen;
    childMaxSeen = restartNow.childMax;
    restartedAt = new Map([...restartedAt].filter(([k]) => restartSeen.has(k)));
    $("actors-count").textContent = `${countNodes(tree)} actors`;
  }

  // ---------------------------------------------------------------- Failed records

  let failed = [];

  async function refreshFailed() {
    const stage = $("failed-stage").value;
    const query = stage ? `?limit=200&stage=${encodeURIComponent(stage)}` : "?limit=200";
    failed = (await api(`/v1/failed${query}`)).failed;
    showFailed();
  }

  function showFailed() {
    const needle = $("failed-search").value.trim().toLowerCase();
    const rows = failed.filter((f) =>
      needle === "" ||
      [String(f.record_id ?? ""), f.reason, String(f.raw ?? "")].some((x) =>
        x.toLowerCase().includes(needle)
      )
    );
    $("failed-table").hidden = rows.length === 0;
    $("failed-empty").hidden = rows.length > 0;
    $("failed-empty").textContent = failed.length === 0
      ? "No failed record."
      : "No failed record matches the filter.";
    $("failed-rows").replaceChildren(...rows.map((f) =>
      el(
        "tr",
        {},
        el("td", { text: String(f.seq) }),
        el("td", {}, el("code", { text: f.record_id == null ? "–" : String(f.record_id) })),
        el("td", { text: f.stage }),
        el("td", { class: "reason", text: f.reason }),
        el("td", { text: timeText(f.failed_at) }),
        el(
          "td",
          {},
          el(
            "details",
            {},
            el("summary", { text: "show" }),
            el("pre", { text: typeof f.raw === "string" ? f.raw : JSON.stringify(f.raw, null, 2) }),
          ),
        ),
      )
    ));
  }

  // ---------------------------------------------------------------- Stream

  function parseEvents(buffer, onEvent) {
    // Events end with a blank line; lines are "field: value".
    for (let m; (m = /\r?\n\r?\n/.exec(buffer)) !== null;) {
      const block = buffer.slice(0, m.index);
      buffer = buffer.slice(m.index + m[0].length);
      const event = { event: "message", data: [], id: undefined, retry: undefined };
      for (const line of block.split(/\r?\n/)) {
        if (line === "" || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") event.data.push(value);
        else if (field === "event") event.event = value;
        else if (field === "id") event.id = value;
        else if (field === "retry") event.retry = Number(value);
      }
      onEvent(event);
    }
    return buffer;
  }

  async function stream() {
    let lastId = null;
    let retry = 2000;
    for (;;) {
      try {
        const headers = authHeaders(lastId ? { "last-event-id": lastId } : {});
        const res = await fetch("/v1/stream", { headers, cache: "no-store" });
        if (res.status === 401) {
          sessionStorage.removeItem(TOKEN_KEY);
          await askToken();
          continue;
        }
        if (!res.ok || !res.body) throw new Error(`stream answered ${res.status}`);
        showConnection("live");
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer = parseEvents(buffer + value, (e) => {
            if (e.retry > 0) retry = e.retry;
            if (e.id !== undefined) lastId = e.id;
            if (e.data.length === 0) return;
            const data = JSON.parse(e.data.join("\n"));
            if (e.event === "samples") {
              appendSamples(data);
              updateFigures();
              drawLive();
            } else if (e.event === "status") showStatus(data);
            else if (e.event === "actors") showActors(data);
            else if (e.event === "alerts") showAlerts(data);
          });
        }
      } catch {
        // Reconnect below.
      }
      showConnection("retrying");
      await new Promise((r) => setTimeout(r, retry));
    }
  }

  // ---------------------------------------------------------------- Start

  async function start() {
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      const auth = await fetch("/dashboard/auth.json").then((r) => r.json()).catch(() => ({}));
      if (auth.token_required) await askToken();
    }
    for (const b of document.querySelectorAll(".range button")) {
      b.addEventListener("click", () => setRange(b.dataset.range));
    }
    $("failed-filter").addEventListener("submit", (e) => {
      e.preventDefault();
      refreshFailed().catch(() => {});
    });
    $("failed-stage").addEventListener("change", () => refreshFailed().catch(() => {}));
    $("failed-search").addEventListener("input", showFailed);
    $("range-note").textContent = "Live: the last 15 minutes, one sample per second.";
    watchSizes();
    drawLive();
    stream();
    api("/v1/config").then((c) => {
      $("config-json").textContent = JSON.stringify(c, null, 2);
    }).catch((e) => {
      $("config-json").textContent = `Could not load the configuration: ${e.message}`;
    });
    refreshFailed().catch(() => {});
    setInterval(() => {
      if (document.visibilityState === "visible") refreshFailed().catch(() => {});
    }, 10_000);
  }

  // For tests and the curious: the charts and the live table.
  globalThis.troupeDashboard = { charts, live };
  start();
})();
