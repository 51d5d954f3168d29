// Lingua operator dashboard (MISSION S4). Plain JS, no dependencies, nothing fetched from
// elsewhere. Every 2 s it reads /api/v1/stats (the background snapshot) and /api/v1/nodes
// (live, so a node going offline shows at the next poll); while no snapshot is served it
// falls back to the live /api/v1/pools. All text goes in through textContent: node ids and
// error messages come from outside and are never parsed as HTML. With several scheduling cells
// (LINGUA_CELLS) it shows a table of the cells, a cell column in the nodes table and the cell
// of each pool in the heatmap; with one cell the page is as it always was.
"use strict";
(() => {
  const POLL_MS = 2000;
  const TIMEOUT_MS = 4000;
  const COLORS = { jobs: "#4a7fd4", failed: "#d64545", dispatch: "#e69422", roundtrip: "#8e5ad6",
    grid: "#d9dde3", text: "#5b6470" };

  const $ = (id) => document.getElementById(id);
  const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);

  // el("td", {class: "x", "data-node-id": id}, "text", child...) -> element (text is escaped)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    for (const c of children) {
      node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
    }
    return node;
  }

  const num = (v, d = 0) => (typeof v === "number" && Number.isFinite(v) ? v : d);
  const yesNo = (b) => (b ? "yes" : "no");
  const ms = (v) => (typeof v === "number" && Number.isFinite(v) ? (v < 10 ? v.toFixed(1) : String(Math.round(v))) : "-");
  const msPair = (l) => `${ms((l || {}).p50_ms)} / ${ms((l || {}).p99_ms)} ms`;
  const age = (v) => (typeof v === "number" && Number.isFinite(v) ? `${(v / 1000).toFixed(1)} s` : "-");
  const clock = (t) => (typeof t === "number" ? new Date(t).toLocaleTimeString([], { hour12: false }) : "-");
  const langs = (sets) => (Array.isArray(sets) && sets.length
    ? sets.map((s) => (Array.isArray(s) ? s.join("+") : String(s))).join("  ") : "-");

  async function getJson(path) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), TIMEOUT_MS);
    try {
      const r = await fetch(path, { signal: ctrl.signal, cache: "no-store", headers: { Accept: "application/json" } });
      if (!r.ok) return { ok: false, status: r.status };
      return { ok: true, data: await r.json() };
    } catch (e) {
      return { ok: false, status: 0, error: e && e.name === "AbortError" ? "timeout" : "unreachable" };
    } finally {
      clearTimeout(timer);
    }
  }

  function fillRows(tbody, rows, columns) {
    if (!rows.length) {
      tbody.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: columns }, "none")));
    } else {
      tbody.replaceChildren(...rows);
    }
  }

  const countText = (obj) => {
    const entries = Object.entries(obj && typeof obj === "object" ? obj : {})
      .filter(([, v]) => typeof v === "number").sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    return entries.length ? entries.map(([k, v]) => `${k} × ${v}`).join(", ") : "-";
  };

  function countRows(tbody, obj, testid) {
    const entries = Object.entries(obj && typeof obj === "object" ? obj : {})
      .filter(([, v]) => typeof v === "number").sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    fillRows(tbody, entries.map(([k, v]) => el("tr", { "data-testid": testid, "data-key": k },
      el("td", {}, k), el("td", { class: "num" }, v))), 2);
  }

  // -- summary cards -------------------------------------------------------------------
  function setText(testid, text) {
    const node = byTestId(testid);
    if (node) node.textContent = text;
  }

  function renderSummary(snap, nodes) {
    const s = (snap && snap.nodes) || {};
    if (nodes) {
      setText("count-registered", nodes.length);
      setText("count-connected", nodes.filter((n) => n.connected).length);
      setText("count-schedulable", nodes.filter((n) => n.schedulable).length);
      const alive = nodes.filter((n) => n.alive !== false);
      const sum = (f) => alive.reduce((a, n) => a + num(n[f]), 0);
      setText("slots", `${sum("running")}+${sum("reserved")} / ${sum("capacity")}`);
    } else if (snap) {
      setText("count-registered", num(s.registered));
      setText("count-connected", num(s.connected));
      setText("count-schedulable", num(s.schedulable));
      const l = s.load || {};
      setText("slots", `${num(l.running)}+${num(l.reserved)} / ${num(l.capacity)}`);
    }
    if (snap) {
      setText("count-sessions", num(snap.sessions_active));
      setText("jobs-per-s", num(snap.jobs_per_s).toFixed(2));
      setText("dispatch-latency", msPair(snap.dispatch_latency));
      setText("roundtrip-latency", msPair(snap.roundtrip_latency));
    }
  }

  // -- cells (only when there are several) ---------------------------------------------
  let severalCells = false;

  function setSeveralCells(several) {
    severalCells = several;
    document.body.classList.toggle("multi-cell", several);
    $("cells").hidden = !several;
  }

  function renderCells(cells) {
    const list = Array.isArray(cells) ? cells.filter((c) => c && typeof c === "object") : [];
    const names = (v) => (Array.isArray(v) && v.length ? v.map(String) : null);
    fillRows($("cell-rows"), list.map((c) => {
      const n = c.nodes || {};
      return el("tr", { "data-testid": "cell-row", "data-cell": c.name },
        el("td", { class: "id" }, c.name), el("td", {}, (names(c.regions) || ["-"]).join(", ")),
        el("td", {}, (names(c.ladder) || ["-"]).join(" > ")),
        el("td", { class: "num", "data-testid": "cell-nodes" }, `${num(n.connected)} / ${num(n.registered)}`),
        el("td", { class: "num" }, num(n.schedulable)), el("td", { class: "num" }, num(c.pools)),
        el("td", { class: "num", "data-testid": "cell-sessions" }, num(c.sessions_active)),
        el("td", { class: "num" }, num(c.jobs_per_s).toFixed(2)),
        el("td", { "data-testid": "cell-fallbacks-out" }, countText(c.fallbacks_out)),
        el("td", { "data-testid": "cell-fallbacks-in" }, countText(c.fallbacks_in)));
    }), 10);
  }

  // -- pool heatmap --------------------------------------------------------------------
  // One shape for both sources: the snapshot's PoolSummary, or a PoolView group summed here.
  function poolsFromView(view) {
    return ((view && view.groups) || []).map((g) => {
      const shards = Array.isArray(g.shards) ? g.shards : [];
      const members = shards.flatMap((s) => s.members || []);
      const p = { langset: g.langset || [], region: g.region, gpu_tier: g.gpu_tier, cell: g.cell,
        shards: shards.length, members: members.length,
        schedulable: members.filter((m) => m.schedulable).length,
        capacity: 0, running: 0, reserved: 0 };
      for (const s of shards) {
        p.capacity += num(s.capacity); p.running += num(s.running); p.reserved += num(s.reserved);
      }
      p.load = p.capacity ? Math.min(1, (p.running + p.reserved) / p.capacity) : 0;
      return p;
    });
  }

  function heatColor(p) {
    if (!num(p.capacity) || !num(p.schedulable)) return "#c3c8cf";
    const load = Math.max(0, Math.min(1, num(p.load)));
    return `hsl(${Math.round(130 * (1 - load))}, 62%, ${48 - 8 * load}%)`;
  }

  function renderHeatmap(pools) {
    const box = $("heatmap");
    if (!pools.length) { box.replaceChildren(el("p", { class: "empty" }, "no pools")); return; }
    const setKey = (p) => (Array.isArray(p.langset) ? p.langset.join("+") : String(p.langset));
    const colKey = (p) => `${severalCells ? `${p.cell || "?"}: ` : ""}${p.region || "?"} / ${p.gpu_tier || "?"}`;
    const rows = [...new Set(pools.map(setKey))].sort();
    const cols = [...new Set(pools.map(colKey))].sort();
    const at = new Map(pools.map((p) => [`${setKey(p)}|${colKey(p)}`, p]));
    const head = el("tr", {}, el("th", {}, "language set"), ...cols.map((c) => el("th", {}, c)));
    const body = rows.map((r) => el("tr", {}, el("th", { scope: "row" }, r), ...cols.map((c) => {
      const p = at.get(`${r}|${c}`);
      if (!p) return el("td", { class: "pool none" });
      const load = Math.round(100 * num(p.load));
      const td = el("td", {
        class: "pool", "data-testid": "pool-cell",
        "data-pool": `${(p.langset || []).join("_")}:${p.region}:${p.gpu_tier}`, "data-cell": p.cell,
        title: `${r} @ ${c}\nload ${load}%\ncapacity ${num(p.capacity)}, reserved ${num(p.reserved)}, ` +
          `running ${num(p.running)}\nmembers ${num(p.members)} (schedulable ${num(p.schedulable)}), ` +
          `shards ${num(p.shards)}`,
      }, el("span", { class: "load" }, `${load}%`),
      el("span", { class: "slots" }, `cap ${num(p.capacity)} · res ${num(p.reserved)} · run ${num(p.running)}`),
      el("span", { class: "members" }, `${num(p.schedulable)}/${num(p.members)} nodes`));
      td.style.backgroundColor = heatColor(p);
      return td;
    })));
    box.replaceChildren(el("table", { class: "heatmap" }, el("thead", {}, head), el("tbody", {}, ...body)));
  }

  // -- nodes table ---------------------------------------------------------------------
  function renderNodes(nodes) {
    const list = [...nodes].sort((a, b) => String(a.node_id).localeCompare(String(b.node_id)) ||
      String(a.cell || "").localeCompare(String(b.cell || "")));
    fillRows($("node-rows"), list.map((n) => {
      const flag = (b, testid) => el("td", { class: b ? "yes" : "no", "data-testid": testid }, yesNo(b));
      return el("tr", {
        "data-testid": "node-row", "data-node-id": n.node_id, "data-cell": n.cell,
        "data-connected": yesNo(n.connected), "data-schedulable": yesNo(n.schedulable),
      },
      el("td", { class: "id" }, n.node_id), el("td", { class: "cell-col" }, n.cell || "-"),
      flag(n.connected, "node-connected"),
      flag(n.schedulable, "node-schedulable"), el("td", {}, n.status || (n.alive === false ? "gone" : "-")),
      el("td", {}, n.region || "-"), el("td", {}, n.gpu_tier || "-"), el("td", {}, langs(n.lang_sets)),
      el("td", { class: "num" }, `${num(n.running)}+${num(n.reserved)} / ${num(n.capacity)}`),
      el("td", { class: "num" }, age(n.last_heartbeat_age_ms)),
      el("td", { class: "num" }, age(n.ttl_remaining_ms)), el("td", {}, n.gateway_id || "-"));
    }), 12);
  }

  // -- jobs and latency chart ----------------------------------------------------------
  function renderChart(series) {
    const canvas = $("chart");
    const ratio = window.devicePixelRatio || 1;
    const w = Math.max(300, canvas.clientWidth || 900), h = 220;
    canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio);
    const g = canvas.getContext("2d");
    if (!g) return;
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    g.font = "11px system-ui, sans-serif";
    const pts = Array.isArray(series) ? series : [];
    const L = 44, R = w - 52, T = 10, B = h - 22;
    if (!pts.length) {
      g.fillStyle = COLORS.text; g.fillText("no data yet", w / 2 - 30, h / 2); return;
    }
    const nice = (v) => { const e = 10 ** Math.floor(Math.log10(v)); return [1, 2, 5, 10].find((m) => m * e >= v) * e; };
    const jobsMax = nice(Math.max(1, ...pts.map((p) => num(p.jobs))));
    const lat = pts.flatMap((p) => [p.dispatch_p99_ms, p.roundtrip_p99_ms]).filter((v) => typeof v === "number");
    const msMax = nice(Math.max(1, ...lat));
    const step = (R - L) / pts.length;
    const y = (v, max) => B - (B - T) * (v / max);
    g.strokeStyle = COLORS.grid; g.fillStyle = COLORS.text; g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const yy = Math.round(T + ((B - T) * i) / 4) + 0.5;
      g.beginPath(); g.moveTo(L, yy); g.lineTo(R, yy); g.stroke();
      g.textAlign = "right"; g.fillText(String(+(jobsMax * (1 - i / 4)).toFixed(2)), L - 4, yy + 4);
      g.textAlign = "left"; g.fillText(`${+(msMax * (1 - i / 4)).toFixed(1)}ms`, R + 4, yy + 4);
    }
    pts.forEach((p, i) => {
      const x = L + i * step + 1, bw = Math.max(1, step - 2);
      g.fillStyle = COLORS.jobs; g.fillRect(x, y(num(p.jobs), jobsMax), bw, B - y(num(p.jobs), jobsMax));
      g.fillStyle = COLORS.failed; g.fillRect(x, y(num(p.failed), jobsMax), bw, B - y(num(p.failed), jobsMax));
    });
    for (const [field, color] of [["dispatch_p99_ms", COLORS.dispatch], ["roundtrip_p99_ms", COLORS.roundtrip]]) {
      g.strokeStyle = color; g.fillStyle = color; g.lineWidth = 2; g.beginPath();
      let drawing = false;
      pts.forEach((p, i) => {
        const v = p[field], x = L + (i + 0.5) * step;
        if (typeof v !== "number") { drawing = false; return; }
        if (drawing) g.lineTo(x, y(v, msMax)); else g.moveTo(x, y(v, msMax));
        drawing = true;
        g.fillRect(x - 1.5, y(v, msMax) - 1.5, 3, 3);
      });
      g.stroke();
    }
    g.fillStyle = COLORS.text; g.textAlign = "left";
    g.fillText(clock(num(pts[0].ts) * 1000), L, h - 6);
    g.textAlign = "right"; g.fillText(clock(num(pts[pts.length - 1].ts) * 1000), R, h - 6);
  }

  // -- errors, exclusions, catalog -----------------------------------------------------
  function renderErrors(snap) {
    const chips = Object.entries(snap.errors_by_code || {}).sort((a, b) => b[1] - a[1]);
    $("errors-by-code").replaceChildren(...chips.map(([code, n]) =>
      el("span", { class: "chip bad", "data-testid": "error-code", "data-code": code }, `${code} × ${n}`)));
    const recent = Array.isArray(snap.recent_errors) ? snap.recent_errors.slice(0, 20) : [];
    fillRows($("error-rows"), recent.map((e) => el("tr", { "data-testid": "error-row", "data-code": e.code, "data-cell": e.cell },
      el("td", { class: "num" }, clock(e.ts_ms)), el("td", { class: "code" }, e.code),
      el("td", { class: "msg" }, e.message), el("td", { class: "id" }, e.session_id || "-"),
      el("td", { class: "id" }, e.job_id || "-"))), 5);
  }

  function renderCatalog(c) {
    c = c || {};
    const status = $("catalog-status");
    const ago = (t) => (typeof t === "number" ? `${Math.max(0, Math.round((Date.now() - t) / 1000))} s ago` : "never");
    let text, state;
    if (!c.url) { text = "no catalog URL configured"; state = "idle"; }
    else if (c.ok) { text = `ok: ${(c.services || []).length} services from ${c.url}, fetched ${ago(c.fetched_at_ms)}`; state = "ok"; }
    else { text = `unavailable: ${c.error || "not fetched yet"} (${c.url}, last attempt ${ago(c.last_attempt_ms)})`; state = "bad"; }
    status.textContent = text; status.dataset.state = state; status.className = state;
    const names = (c.services || []).slice(0, 60).map((s) => (s && typeof s === "object"
      ? [s.name || s.id || s.service_id || "?", s.version].filter(Boolean).join(" ") : String(s)));
    $("catalog-services").replaceChildren(...names.map((n) => el("li", { class: "chip" }, n)));
  }

  function setStatus(text, state) {
    const s = $("status");
    s.textContent = text; s.dataset.state = state; s.className = `status ${state}`;
  }

  // -- polling -------------------------------------------------------------------------
  async function tick() {
    try {
      const [stats, nodes] = await Promise.all([getJson("/api/v1/stats"), getJson("/api/v1/nodes")]);
      const snap = stats.ok && stats.data && typeof stats.data === "object" ? stats.data : null;
      let liveNodes = nodes.ok && Array.isArray(nodes.data) ? nodes.data : null;
      let pools = snap && Array.isArray(snap.pools) ? snap.pools : null;
      if (!pools) {
        const view = await getJson("/api/v1/pools");
        if (view.ok) pools = poolsFromView(view.data);
      }
      if (!liveNodes && snap && Array.isArray(snap.node_list)) liveNodes = snap.node_list;
      if (snap && Array.isArray(snap.cells)) {
        setSeveralCells(snap.cells.length > 1);
      } else if (liveNodes) {
        setSeveralCells(new Set(liveNodes.map((n) => n.cell).filter(Boolean)).size > 1 || severalCells);
      }
      if (!snap && !liveNodes && !pools) {
        setStatus(`waiting for data (stats service ${stats.error || `answered ${stats.status}`})`, "waiting");
        return;
      }
      renderSummary(snap, nodes.ok ? liveNodes : null);
      if (pools) renderHeatmap(pools);
      if (liveNodes) renderNodes(liveNodes);
      if (snap) {
        if (severalCells) renderCells(snap.cells);
        renderChart(snap.series);
        renderErrors(snap);
        countRows($("exclusion-rows"), snap.exclusions, "exclusion-row");
        countRows($("unserved-rows"), snap.unserved, "unserved-row");
        countRows($("pair-rows"), snap.language_pairs, "pair-row");
        renderCatalog(snap.catalog);
        const old = (Date.now() - num(snap.generated_at_ms, Date.now())) / 1000;
        setStatus(`live · updated ${clock(Date.now())} · snapshot ${Math.max(0, old).toFixed(1)} s old` +
          ` (window ${num(snap.window_s, 60)} s)`, "live");
      } else {
        setStatus(`live views only · updated ${clock(Date.now())} · waiting for data from /api/v1/stats`, "partial");
      }
    } catch (e) {
      console.error("dashboard: render failed", e); // a bug, not an outage: make it visible
      setStatus(`dashboard error: ${e && e.message ? e.message : e}`, "error");
    } finally {
      setTimeout(tick, POLL_MS);
    }
  }

  tick();
})();
