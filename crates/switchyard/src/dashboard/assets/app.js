// Switchyard dashboard. Plain script, no library: reads and changes everything
// through the admin API with the session cookie; changes send the CSRF header.
"use strict";

(function () {
  const CSRF = document.querySelector('meta[name="switchyard-csrf"]').content;
  const POLL_MS = 3000;
  const COLORS = ["--c0", "--c1", "--c2", "--c3", "--c4", "--c5", "--c6", "--c7"].map(
    (v) => getComputedStyle(document.documentElement).getPropertyValue(v).trim()
  );
  const providerColor = {};
  function colorOf(name) {
    if (!(name in providerColor)) {
      providerColor[name] = COLORS[Object.keys(providerColor).length % COLORS.length];
    }
    return providerColor[name];
  }

  // ---------------------------------------------------------------- helpers
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      // Through the CSSOM: the Content Security Policy refuses style attributes.
      else if (k === "style") e.style.cssText = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  const SVG = "http://www.w3.org/2000/svg";
  function sv(tag, attrs, ...children) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  function usd(nano) {
    const v = Number(nano || 0) / 1e9;
    if (v === 0) return "$0";
    if (v < 0.01) return "$" + v.toFixed(6);
    return "$" + v.toFixed(2);
  }
  function ms(us) {
    if (us === null || us === undefined) return "–";
    const v = us / 1000;
    return v < 10 ? v.toFixed(1) + " ms" : Math.round(v) + " ms";
  }
  function pct(x) {
    return (100 * (x || 0)).toFixed(1) + "%";
  }
  function num(x, digits) {
    return Number(x || 0).toFixed(digits || 0);
  }
  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return d.toLocaleString();
  }
  function duration(msv) {
    if (msv === null || msv === undefined) return "–";
    const s = Math.ceil(msv / 1000);
    if (s < 120) return s + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return Math.round(s / 3600) + " h";
  }
  function table(headers, rows, opts) {
    opts = opts || {};
    const head = el("tr", {}, headers.map((h) =>
      el("th", { class: h.endsWith("#") ? "num" : "" }, h.replace(/#$/, ""))));
    const body = rows.length
      ? rows
      : [el("tr", {}, el("td", { colspan: headers.length, class: "empty" }, opts.empty || "Nothing yet."))];
    return el("div", { class: "scroll" }, el("table", { id: opts.id }, el("thead", {}, head), el("tbody", {}, body)));
  }
  const td = (v, cls) => el("td", { class: cls || "" }, v);
  const tdn = (v) => el("td", { class: "num" }, v);

  async function api(method, path, body) {
    const init = { method, headers: { accept: "application/json" }, credentials: "same-origin" };
    if (method !== "GET") init.headers["x-switchyard-csrf"] = CSRF;
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    if (res.status === 401) {
      // The session ended (logout elsewhere, expiry, a new admin token).
      location.reload();
      throw new Error("session ended");
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: { message: text } }; }
    if (!res.ok) {
      const msg = data && data.error ? data.error.message : res.status + " " + res.statusText;
      throw new Error(msg);
    }
    return data;
  }
  function win() {
    return document.getElementById("window").value;
  }
  function fill(container, ...children) {
    container.replaceChildren(...children.flat().filter((c) => c));
  }

  // ---------------------------------------------------------------- charts
  // Traffic share per provider over time: stacked areas, 0–100 %.
  function shareChart(starts, series, bucketMs) {
    const W = 800, H = 220, L = 34, R = 8, T = 8, B = 22;
    const names = Object.keys(series);
    const n = starts.length;
    const totals = starts.map((_, i) => names.reduce((s, p) => s + series[p][i], 0));
    const bw = (W - L - R) / Math.max(1, n);
    const y = (f) => T + (1 - f) * (H - T - B);
    const svg = sv("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": "Traffic share per provider" });
    for (const f of [0, 0.5, 1]) {
      svg.append(sv("line", { x1: L, x2: W - R, y1: y(f), y2: y(f), stroke: "#e3e6ec" }));
      svg.append(sv("text", { x: 2, y: y(f) + 4 }, f * 100 + "%"));
    }
    // One 100 % column per bucket, stacked by provider; buckets without traffic stay
    // pale, so that a gap is not read as a share.
    starts.forEach((_, i) => {
      const x = L + i * bw;
      if (!totals[i]) {
        svg.append(sv("rect", { x: x + 0.5, y: T, width: Math.max(0.5, bw - 1), height: H - T - B, fill: "#f3f4f7" }));
        return;
      }
      let below = 0;
      names.forEach((p) => {
        const share = series[p][i] / totals[i];
        if (!share) return;
        svg.append(sv("rect", {
          x: x + 0.5, y: y(below + share), width: Math.max(0.5, bw - 1), height: y(below) - y(below + share),
          fill: colorOf(p), "data-provider": p,
        }, sv("title", {}, `${p}: ${(share * 100).toFixed(0)}% of ${totals[i]}`)));
        below += share;
      });
    });
    const ticks = 4;
    for (let k = 0; k <= ticks; k++) {
      const i = Math.min(n - 1, Math.round((k * (n - 1)) / ticks));
      if (i < 0) continue;
      const t = new Date(starts[i]);
      const anchor = k === 0 ? "start" : k === ticks ? "end" : "middle";
      svg.append(sv("text", { x: k === ticks ? W - R : L + i * bw, y: H - 6, "text-anchor": anchor },
        t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
    }
    return svg;
  }
  // Requests per bucket (all providers): small columns under the share chart.
  function volumeChart(starts, series) {
    const W = 800, H = 70, L = 34, R = 8;
    const names = Object.keys(series);
    const totals = starts.map((_, i) => names.reduce((s, p) => s + series[p][i], 0));
    const max = Math.max(1, ...totals);
    const bw = (W - L - R) / Math.max(1, starts.length);
    const svg = sv("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": "Requests per bucket" });
    svg.append(sv("text", { x: 2, y: 12 }, max));
    totals.forEach((t, i) => {
      const h = ((H - 8) * t) / max;
      svg.append(sv("rect", { x: L + i * bw + 1, y: H - h, width: Math.max(1, bw - 2), height: h, fill: "#9fb6e0" }));
    });
    return svg;
  }
  // Horizontal bars: [{label, value, text}].
  function barChart(rows) {
    const W = 560, rowH = 24, L = 150, R = 90;
    const H = Math.max(rowH, rows.length * rowH);
    const max = Math.max(1, ...rows.map((r) => r.value));
    const svg = sv("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
    rows.forEach((r, i) => {
      const w = ((W - L - R) * r.value) / max;
      const yy = i * rowH;
      svg.append(sv("text", { x: 0, y: yy + 16 }, r.label.length > 24 ? r.label.slice(0, 23) + "…" : r.label));
      svg.append(sv("rect", { x: L, y: yy + 5, width: Math.max(1, w), height: 14, rx: 3, fill: COLORS[i % COLORS.length] }));
      svg.append(sv("text", { x: L + w + 6, y: yy + 16 }, r.text));
    });
    return svg;
  }
  function legend(names) {
    return el("div", { class: "legend" }, names.map((p) =>
      el("span", {}, el("i", { style: `background:${colorOf(p)}` }), p)));
  }

  // ---------------------------------------------------------------- Overview
  async function overview(root) {
    const o = await api("GET", `/admin/stats/overview?window=${win()}`);
    const t = o.traffic;
    const names = Object.keys(t.providers);
    // The share now: the newest bucket that has traffic.
    let last = -1;
    for (let i = t.bucket_start_ms.length - 1; i >= 0 && last < 0; i--) {
      if (names.some((p) => t.providers[p][i] > 0)) last = i;
    }
    const lastTotal = last < 0 ? 0 : names.reduce((s, p) => s + t.providers[p][last], 0);
    const shareNow = names.map((p) => {
      const share = lastTotal ? t.providers[p][last] / lastTotal : 0;
      return el("tr", { "data-provider": p, "data-share": share.toFixed(4) },
        td(el("span", {}, el("i", { class: "swatch", style: `display:inline-block;width:10px;height:10px;background:${colorOf(p)};margin-right:6px` }), p)),
        tdn(pct(share)), tdn(t.providers[p][last] || 0));
    });
    const card = (id, label, value, data) =>
      el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", Object.assign({ class: "value", id }, data || {}), value));
    const deployments = o.deployments.map((d) => el("tr", { "data-deployment": d.deployment },
      td(d.deployment), td(d.provider, "muted"), tdn(d.requests), tdn(num(d.requests_per_second, 3)),
      tdn(pct(d.error_rate)), el("td", { class: "num failed-attempts" }, d.attempts ? `${d.failed_attempts} / ${d.attempts}` : "–"), tdn(ms(d.latency_us.p50)), tdn(ms(d.latency_us.p99)),
      tdn(ms(d.ttft_us.p50)), tdn(ms(d.ttft_us.p99)), tdn(usd(d.cost_nano_usd))));
    fill(root,
      el("div", { class: "cards" },
        card("ov-requests", "Requests", o.requests, { "data-value": o.requests }),
        card("ov-rps", "Requests/s", num(o.requests_per_second, 3)),
        card("ov-error-rate", "Error rate", pct(o.error_rate), { "data-value": o.error_rate }),
        card("ov-p50", "Latency p50", ms(o.latency_us.p50)),
        card("ov-p99", "Latency p99", ms(o.latency_us.p99)),
        card("ov-ttft", "TTFT p50 / p99", ms(o.ttft_us.p50) + " / " + ms(o.ttft_us.p99)),
        card("ov-spend", "Spend", usd(o.cost_nano_usd), { "data-nano": o.cost_nano_usd })),
      el("div", { class: "grid2" },
        el("div", { class: "panel" },
          el("h2", {}, "Traffic share per provider"),
          names.length ? shareChart(t.bucket_start_ms, t.providers, o.window.bucket_ms) : el("p", { class: "empty" }, "No traffic in this window."),
          names.length ? volumeChart(t.bucket_start_ms, t.providers) : null,
          legend(names)),
        el("div", { class: "panel" },
          el("h2", {}, "Share in the latest bucket"),
          table(["Provider", "Share#", "Requests#"], shareNow, { id: "share-now" }),
          el("p", { class: "muted" }, `Buckets of ${o.window.bucket_ms / 1000} s; the window ends ${when(o.window.end)}.`))),
      el("div", { class: "panel" },
        el("h2", {}, "Per deployment"),
        table(["Deployment", "Provider", "Requests#", "Req/s#", "Errors#", "Failed attempts#", "p50#", "p99#", "TTFT p50#", "TTFT p99#", "Cost#"],
          deployments, { id: "deployments" })));
  }

  // ---------------------------------------------------------------- Spend
  let spendBy = "team";
  async function spend(root) {
    const [grouped, daily, teams, keys] = await Promise.all([
      api("GET", `/admin/spend?by=${spendBy}`),
      api("GET", "/admin/spend?by=day"),
      api("GET", "/admin/teams").catch(() => ({ data: [] })),
      api("GET", "/admin/keys").catch(() => ({ data: [] })),
    ]);
    const tabs = el("div", { class: "filters" }, ["team", "key", "model", "provider", "deployment"].map((g) =>
      el("button", { class: g === spendBy ? "small" : "small ghost", "data-by": g,
        onclick: () => { spendBy = g; refresh(); } }, g)));
    const rows = grouped.data.map((r) => ({ label: r.group, value: r.cost_nano_usd, text: usd(r.cost_nano_usd) }));
    const days = daily.data.slice().sort((a, b) => (a.group < b.group ? -1 : 1)).slice(-31);
    const budgets = [];
    const addBudgets = (owner, kind, list) => (list || []).forEach((b) => {
      const used = b.limit_nano_usd ? (b.spent_nano_usd + b.reserved_nano_usd) / b.limit_nano_usd : 0;
      const warn = (b.warn_at_percent || []).filter((w) => w <= 100);
      const crossed = warn.filter((w) => used * 100 >= w);
      const cls = used >= 1 ? "bad" : crossed.length ? "warn" : "";
      budgets.push(el("tr", { "data-budget": `${kind}:${owner}:${b.period}` },
        td(kind), td(owner), td(b.period), tdn(usd(b.spent_nano_usd)), tdn(usd(b.limit_nano_usd)),
        el("td", {}, el("div", { class: "bar-track", title: pct(used) },
          el("div", { class: "bar-fill " + cls, style: `width:${Math.min(100, used * 100)}%` }),
          warn.map((w) => el("span", { class: "bar-mark", style: `left:${w}%` })))),
        tdn(pct(used)), td(warn.map((w) => w + "%").join(", ") || "–", "muted"), td(when(b.resets_at), "muted")));
    });
    teams.data.forEach((t) => addBudgets(t.name, "team", t.budgets));
    keys.data.forEach((k) => addBudgets(k.name, "key", k.budgets));
    fill(root,
      el("div", { class: "cards" },
        el("div", { class: "card" }, el("div", { class: "label" }, "Spend (all time)"),
          el("div", { class: "value", id: "spend-total", "data-nano": grouped.total_cost_nano_usd }, usd(grouped.total_cost_nano_usd)))),
      el("div", { class: "grid2" },
        el("div", { class: "panel" }, el("h2", {}, "Spend by " + spendBy), tabs,
          rows.length ? barChart(rows) : el("p", { class: "empty" }, "No spend yet."),
          table(["Group", "Requests#", "Errors#", "Prompt tokens#", "Completion tokens#", "Cost#"],
            grouped.data.map((r) => el("tr", { "data-group": r.group }, td(r.group), tdn(r.requests), tdn(r.errors),
              tdn(r.prompt_tokens), tdn(r.completion_tokens), tdn(usd(r.cost_nano_usd)))), { id: "spend-table" })),
        el("div", { class: "panel" }, el("h2", {}, "Spend by day (UTC)"),
          days.length ? barChart(days.map((d) => ({ label: d.group, value: d.cost_nano_usd, text: usd(d.cost_nano_usd) })))
            : el("p", { class: "empty" }, "No spend yet."))),
      el("div", { class: "panel" }, el("h2", {}, "Budgets"),
        table(["Scope", "Owner", "Period", "Spent#", "Limit#", "Burn", "Used#", "Thresholds", "Resets"], budgets,
          { id: "budgets", empty: "No team or key has a budget." })));
  }

  // ---------------------------------------------------------------- Health
  async function health(root) {
    const [h, errs] = await Promise.all([
      api("GET", "/admin/health"),
      api("GET", `/admin/stats/errors?window=${win()}`),
    ]);
    const room = (q) => q ? `${q.remaining} / ${q.limit}` : "–";
    const rows = h.deployments.map((d) => el("tr", { "data-deployment": d.name },
      td(d.name), td(d.provider, "muted"),
      el("td", { class: "breaker" }, el("span", { class: "badge " + d.breaker }, d.breaker.replace("_", "-"))),
      td(d.breaker_reopens_in_ms === null ? "–" : duration(d.breaker_reopens_in_ms)),
      el("td", { class: "exhausted" }, d.exhausted_for_ms ? el("span", { class: "badge bad", title: d.exhausted_until }, "until " + new Date(d.exhausted_until).toLocaleTimeString()) : "–"),
      tdn(room(d.quota.requests)), tdn(room(d.quota.tokens)),
      tdn(d.calls_in_flight), tdn(d.latency_ms === null ? "–" : num(d.latency_ms, 1) + " ms")));
    const erows = errs.data.map((e) => el("tr", { "data-deployment": e.deployment, "data-class": e.error_class },
      td(e.deployment), td(el("span", { class: "badge bad" }, e.error_class)), tdn(e.attempts), td(when(e.last_at), "muted")));
    fill(root,
      el("div", { class: "panel" }, el("h2", {}, "Deployments (this replica, now)"),
        table(["Deployment", "Provider", "Breaker", "Reopens in", "Provider exhaustion", "RPM room#", "TPM room#", "In flight#", "Latency est.#"],
          rows, { id: "health" })),
      el("div", { class: "panel" }, el("h2", {}, "Recent failed attempts by class"),
        table(["Deployment", "Error class", "Attempts#", "Latest"], erows, { id: "errors", empty: "No failed attempts in this window." })));
  }

  // ---------------------------------------------------------------- Requests
  const filters = { key: "", team: "", model: "", status: "" };
  let selected = null;
  async function requests(root) {
    if (!root.querySelector("#req-filters")) {
      const input = (name, ph) => el("div", {}, el("label", { for: "f-" + name }, name),
        el("input", { id: "f-" + name, value: filters[name], placeholder: ph,
          onchange: (ev) => { filters[name] = ev.target.value.trim(); refresh(); },
          onkeydown: (ev) => { if (ev.key === "Enter") { filters[name] = ev.target.value.trim(); refresh(); } } }));
      root.replaceChildren(
        el("div", { class: "panel" },
          el("div", { class: "filters", id: "req-filters" },
            input("key", "id or name"), input("team", "team"), input("model", "model"),
            el("div", {}, el("label", { for: "f-status" }, "status"),
              el("select", { id: "f-status", onchange: (ev) => { filters.status = ev.target.value; refresh(); } },
                ["", "ok", "error", "200", "401", "404", "429", "502", "503", "504"].map((s) => el("option", { value: s }, s || "any")))))),
        el("div", { class: "panel", id: "req-detail" }),
        el("div", { class: "panel", id: "req-list" }));
    }
    const q = new URLSearchParams({ limit: "100" });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    const list = await api("GET", "/admin/requests?" + q);
    const rows = list.data.map((r) => el("tr", {
      class: "clickable" + (r.request_id === selected ? " selected" : ""), "data-request": r.request_id,
      onclick: () => { selected = r.request_id; showRequest(root, r.request_id); },
    },
      td(when(r.started_at), "muted"), td(r.key_name || r.key_id || "–"), td(r.team || "–"), td(r.model || "–"),
      td(r.deployment || "–"), el("td", {}, el("span", { class: "badge " + (r.status < 400 && !r.error_code ? "ok" : "bad") }, r.status)),
      td(r.error_code || "", "muted"), tdn(ms(r.latency_us)), tdn(r.prompt_tokens + r.completion_tokens), tdn(usd(r.cost_nano_usd))));
    fill(root.querySelector("#req-list"), el("h2", {}, "Recent requests"),
      table(["Started", "Key", "Team", "Model", "Deployment", "Status", "Error", "Latency#", "Tokens#", "Cost#"], rows,
        { id: "requests", empty: "No request matches." }));
    if (selected) await showRequest(root, selected);
    else fill(root.querySelector("#req-detail"), el("p", { class: "muted" }, "Select a request to see its attempts and route."));
  }
  async function showRequest(root, id) {
    const r = await api("GET", "/admin/requests/" + encodeURIComponent(id));
    const hops = [];
    r.attempts.forEach((a, i) => {
      if (i) hops.push(el("span", { class: "arrow" }, "→"));
      const failed = !!a.error_class;
      hops.push(el("div", { class: "hop " + (failed ? "failed" : "served"), "data-attempt": a.attempt },
        el("strong", {}, a.deployment), " ", el("span", { class: "muted" }, a.provider), el("br"),
        (a.status === null ? "no answer" : "HTTP " + a.status), failed ? " · " + a.error_class : "", " · ", ms(a.latency_us)));
    });
    root.querySelectorAll("tr[data-request]").forEach((tr) =>
      tr.classList.toggle("selected", tr.getAttribute("data-request") === id));
    fill(root.querySelector("#req-detail"),
      el("h2", {}, "Request ", el("code", {}, r.request_id)),
      el("p", {}, `${r.model || "–"} · status ${r.status}${r.error_code ? " (" + r.error_code + ")" : ""} · ${ms(r.latency_us)}` +
        (r.ttft_us !== null ? ` · first token ${ms(r.ttft_us)}` : "") + ` · ${usd(r.cost_nano_usd)}`),
      el("div", { class: "route", id: "route" }, hops.length ? hops : el("span", { class: "muted" }, "No upstream call (refused before dispatch).")),
      table(["#", "Deployment", "Upstream model", "Status", "Error class", "Latency#", "Tokens#", "Cost#"],
        r.attempts.map((a) => el("tr", {}, td(a.attempt), td(a.deployment), td(a.upstream_model, "muted"), td(a.status === null ? "–" : a.status),
          td(a.error_class || ""), tdn(ms(a.latency_us)), tdn(a.prompt_tokens + a.completion_tokens), tdn(usd(a.cost_nano_usd)))),
        { empty: "No attempts." }));
  }

  // ---------------------------------------------------------------- Keys and teams
  let newSecret = null;
  let keysError = null;
  function parseJson(text, what) {
    const s = text.trim();
    if (!s) return undefined;
    try { return JSON.parse(s); } catch (e) { throw new Error(`${what} is not valid JSON: ${e.message}`); }
  }
  function budgetInputs(list) {
    return (list || []).map((b) => ({ period: b.period, limit_usd: b.limit_usd, warn_at_percent: b.warn_at_percent }));
  }
  async function act(fn) {
    keysError = null;
    try { await fn(); } catch (e) { keysError = e.message; }
    await refresh();
  }
  function editor(kind, id, item) {
    const pol = el("textarea", { id: `edit-policy-${id}` }, JSON.stringify(item.policy || {}, null, 1));
    const bud = el("textarea", { id: `edit-budgets-${id}` }, JSON.stringify(budgetInputs(item.budgets), null, 1));
    const row = el("tr", { class: "editor-row", "data-editor": id }, el("td", { colspan: 8 },
      el("div", { class: "editor grid2" },
        el("div", {}, el("label", {}, "policy (JSON)"), pol),
        el("div", {}, el("label", {}, "budgets (JSON list: period, limit_usd, warn_at_percent)"), bud)),
      el("button", { class: "small", "data-save": id, onclick: () => act(async () => {
        const path = kind === "team" ? "/admin/teams/" + encodeURIComponent(id) : "/admin/keys/" + encodeURIComponent(id);
        await api("PATCH", path, { policy: parseJson(pol.value, "policy") || {}, budgets: parseJson(bud.value, "budgets") || [] });
        editing = null;
      }) }, "Save"), " ",
      el("button", { class: "small ghost", onclick: () => { editing = null; refresh(); } }, "Cancel")));
    return row;
  }
  let editing = null;
  let armed = null;
  function budgetSummary(list) {
    return (list || []).map((b) => `${b.period} ${usd(b.spent_nano_usd)} / ${usd(b.limit_nano_usd)}`).join("; ") || "–";
  }
  async function keys(root) {
    // Forms are built once, so that a refresh never wipes what is being typed.
    if (!root.querySelector("#key-form")) {
      root.replaceChildren(
        el("div", { id: "keys-notice" }),
        el("div", { class: "grid2" },
          el("div", { class: "panel" }, el("h2", {}, "Create a key"),
            el("form", { id: "key-form", class: "inline", onsubmit: (ev) => { ev.preventDefault(); createKey(); } },
              el("div", {}, el("label", { for: "key-name" }, "name"), el("input", { id: "key-name", required: true })),
              el("div", {}, el("label", { for: "key-team" }, "team"), el("select", { id: "key-team" }, el("option", { value: "" }, "(none)"))),
              el("div", {}, el("label", { for: "key-expires" }, "expires in (s)"), el("input", { id: "key-expires", type: "number", min: "1" })),
              el("div", { style: "flex-basis:100%" }, el("label", { for: "key-policy" }, "policy (JSON, optional)"),
                el("textarea", { id: "key-policy", placeholder: '{"models": ["gpt-4o-mini"], "rpm": 60}' })),
              el("div", { style: "flex-basis:100%" }, el("label", { for: "key-budgets" }, "budgets (JSON, optional)"),
                el("textarea", { id: "key-budgets", placeholder: '[{"period": "month", "limit_usd": "25.00"}]' })),
              el("button", { id: "key-create", type: "submit" }, "Create key"))),
          el("div", { class: "panel" }, el("h2", {}, "Create a team"),
            el("form", { id: "team-form", class: "inline", onsubmit: (ev) => { ev.preventDefault(); createTeam(); } },
              el("div", {}, el("label", { for: "team-name" }, "name"), el("input", { id: "team-name", required: true })),
              el("div", { style: "flex-basis:100%" }, el("label", { for: "team-policy" }, "policy (JSON, optional)"), el("textarea", { id: "team-policy" })),
              el("div", { style: "flex-basis:100%" }, el("label", { for: "team-budgets" }, "budgets (JSON, optional)"), el("textarea", { id: "team-budgets" })),
              el("button", { id: "team-create", type: "submit" }, "Create team")))),
        el("div", { class: "panel", id: "keys-list" }),
        el("div", { class: "panel", id: "teams-list" }));
    }
    const notice = root.querySelector("#keys-notice");
    fill(notice,
      keysError ? el("div", { class: "error-box", id: "keys-error" }, keysError) : null,
      newSecret ? el("div", { class: "secret", id: "new-secret-box" },
        el("strong", {}, `New key “${newSecret.name}”`), " (", el("code", {}, newSecret.id), "). Copy it now: it is shown only once.", el("br"),
        el("code", { id: "new-secret" }, newSecret.key), " ",
        el("button", { class: "small ghost", onclick: () => navigator.clipboard && navigator.clipboard.writeText(newSecret.key) }, "Copy"), " ",
        el("button", { class: "small ghost", onclick: () => { newSecret = null; refresh(); } }, "Dismiss")) : null);
    if (editing) return; // Do not redraw the lists under an open editor.
    const [k, t] = await Promise.all([api("GET", "/admin/keys"), api("GET", "/admin/teams")]);
    const teamSel = root.querySelector("#key-team");
    const chosen = teamSel.value;
    teamSel.replaceChildren(el("option", { value: "" }, "(none)"), ...t.data.map((x) => el("option", { value: x.name }, x.name)));
    teamSel.value = chosen;
    const keyRows = [];
    k.data.slice().reverse().forEach((x) => {
      keyRows.push(el("tr", { "data-key": x.id, "data-name": x.name },
        td(x.name), td(el("code", {}, x.id)), td(x.team || "–"), td(el("code", {}, x.prefix + "…")),
        el("td", { class: "status" }, el("span", { class: "badge " + x.status }, x.status)),
        td(budgetSummary(x.budgets), "muted"), td(when(x.created_at), "muted"),
        el("td", {},
          el("button", { class: "small ghost", "data-edit": x.id, onclick: () => { editing = x.id; drawEditor(root, "key", x); } }, "Edit"), " ",
          // Two clicks: the first arms the button (kept across redraws), the second revokes.
          x.status === "revoked" ? null : el("button", { class: "small danger", "data-revoke": x.id, onclick: (ev) => {
            if (armed === x.id) { armed = null; act(() => api("POST", `/admin/keys/${encodeURIComponent(x.id)}/revoke`)); }
            else { armed = x.id; ev.currentTarget.textContent = "Confirm revoke"; }
          } }, armed === x.id ? "Confirm revoke" : "Revoke"))));
    });
    const teamRows = t.data.map((x) => el("tr", { "data-team": x.name },
      td(x.name), td(el("code", {}, JSON.stringify(x.policy)), "muted"), td(budgetSummary(x.budgets), "muted"), td(when(x.created_at), "muted"),
      el("td", {}, el("button", { class: "small ghost", "data-edit": "team:" + x.name, onclick: () => { editing = x.name; drawEditor(root, "team", x); } }, "Edit"))));
    fill(root.querySelector("#keys-list"), el("h2", {}, "Virtual keys"),
      table(["Name", "Id", "Team", "Prefix", "Status", "Budgets", "Created", ""], keyRows, { id: "keys", empty: "No virtual keys yet." }));
    fill(root.querySelector("#teams-list"), el("h2", {}, "Teams"),
      table(["Name", "Policy", "Budgets", "Created", ""], teamRows, { id: "teams", empty: "No teams yet." }));
  }
  function drawEditor(root, kind, item) {
    root.querySelectorAll("tr.editor-row").forEach((r) => r.remove());
    const sel = kind === "team" ? `tr[data-team="${CSS.escape(item.name)}"]` : `tr[data-key="${CSS.escape(item.id)}"]`;
    const tr = root.querySelector(sel);
    if (tr) tr.after(editor(kind, kind === "team" ? item.name : item.id, item));
  }
  function createKey() {
    act(async () => {
      const v = (id) => document.getElementById(id).value;
      const body = { name: v("key-name").trim() };
      if (v("key-team")) body.team = v("key-team");
      if (v("key-expires")) body.expires_in_seconds = Number(v("key-expires"));
      const policy = parseJson(v("key-policy"), "policy");
      const budgets = parseJson(v("key-budgets"), "budgets");
      if (policy) body.policy = policy;
      if (budgets) body.budgets = budgets;
      newSecret = await api("POST", "/admin/keys", body);
      document.getElementById("key-form").reset();
    });
  }
  function createTeam() {
    act(async () => {
      const v = (id) => document.getElementById(id).value;
      const body = { name: v("team-name").trim() };
      const policy = parseJson(v("team-policy"), "policy");
      const budgets = parseJson(v("team-budgets"), "budgets");
      if (policy) body.policy = policy;
      if (budgets) body.budgets = budgets;
      await api("POST", "/admin/teams", body);
      document.getElementById("team-form").reset();
    });
  }

  // ---------------------------------------------------------------- routing and polling
  const pages = { overview, spend, health, requests, keys };
  let current = null;
  let busy = false;
  async function refresh() {
    if (busy) return;
    busy = true;
    const live = document.getElementById("live");
    try {
      await pages[current](document.getElementById("page-" + current));
      live.classList.remove("stale");
      live.textContent = "live";
      live.title = "Updated " + new Date().toLocaleTimeString();
    } catch (e) {
      live.classList.add("stale");
      live.textContent = "stale";
      live.title = e.message;
    } finally {
      busy = false;
      document.body.setAttribute("data-loaded", current);
    }
  }
  function show() {
    const name = (location.hash || "#overview").slice(1);
    current = name in pages ? name : "overview";
    document.querySelectorAll(".page").forEach((p) => p.classList.toggle("shown", p.id === "page-" + current));
    document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === current));
    document.body.removeAttribute("data-loaded");
    refresh();
  }
  window.addEventListener("hashchange", show);
  document.getElementById("window").addEventListener("change", refresh);
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/dashboard/logout", { method: "POST", headers: { "x-switchyard-csrf": CSRF }, credentials: "same-origin" });
    location.href = "/dashboard";
  });
  // A longer window costs the ledger more per poll (and its buckets are longer):
  // poll it less often.
  function pollEvery() {
    return { "15m": POLL_MS, "1h": 2 * POLL_MS, "24h": 10 * POLL_MS }[win()] || POLL_MS;
  }
  (function tick() {
    setTimeout(() => {
      if (!document.hidden && !editing) refresh();
      tick();
    }, pollEvery());
  })();
  show();
})();
