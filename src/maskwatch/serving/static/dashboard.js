// The watch dashboard: compliance over time (inline SVG), people per class, latest events.
// Everything is drawn here from /api/stats and /api/events; no external script or style.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  // period -> [bucket, seconds shown]
  const PERIODS = {
    hour: ["minute", 3600], day: ["hour", 86400], week: ["hour", 7 * 86400],
    month: ["day", 30 * 86400],
  };
  const NAMES = {
    with_mask: "With mask", without_mask: "Without mask", incorrect_mask: "Mask worn wrongly",
    face: "Face (no classifier)",
  };
  const COLOURS = ["#0b5fd1", "#d1480b", "#2e9e44", "#8a3ffc", "#b8860b", "#e0218a", "#0a8a8a"];
  const params = new URLSearchParams(location.search);
  const refreshSeconds = Math.max(1, Number(params.get("refresh")) || 10);
  const state = {
    apiKey: sessionStorage.getItem("maskwatch-api-key") || "",
    updates: 0,
    sources: new Set(),
    thumbs: new Map(), // event id -> object URL (fetched with the key)
    busy: false,
    again: false,
  };

  function showKeyForm() {
    const refused = $("key-message");
    refused.hidden = !state.apiKey; // a key was given and the server refused it
    if (!$("key-form").hidden) return;
    $("key-form").hidden = false;
    $("key-input").focus();
    $("key-input").select();
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.apiKey = $("key-input").value.trim();
    sessionStorage.setItem("maskwatch-api-key", state.apiKey);
    $("key-form").hidden = true;
    load();
  });

  async function api(path) {
    const headers = state.apiKey ? { "X-API-Key": state.apiKey } : {};
    const response = await fetch(path, { headers, cache: "no-store" });
    if (response.status === 401) {
      showKeyForm();
      throw new Error("this server needs an API key");
    }
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
      throw new Error(detail);
    }
    return response;
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  function colourOf(source, sources) {
    return COLOURS[sources.indexOf(source) % COLOURS.length];
  }

  function timeLabel(ms, bucket) {
    const d = new Date(ms);
    if (bucket === "day") return d.toLocaleDateString([], { month: "short", day: "numeric" });
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return bucket === "hour" && Date.now() - ms > 86400e3
      ? `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${hm}` : hm;
  }

  // ------------------------------------------------------------ the chart

  function drawChart(stats) {
    const box = $("chart");
    box.replaceChildren();
    const W = 900, H = 280, L = 48, R = 16, T = 14, B = 34;
    const t0 = Date.parse(stats.since), t1 = Date.parse(stats.until);
    const x = (ms) => L + (W - L - R) * (ms - t0) / Math.max(1, t1 - t0);
    const y = (v) => T + (H - T - B) * (1 - v);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": "Compliance over time per source" });
    for (const v of [0, 0.5, 1]) {
      root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      const label = svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" });
      label.textContent = `${Math.round(v * 100)}%`;
      root.append(label);
    }
    for (let i = 0; i <= 4; i++) {
      const ms = t0 + (t1 - t0) * i / 4;
      const label = svg("text", { x: x(ms), y: H - 10,
        "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" });
      label.textContent = timeLabel(ms, stats.bucket);
      root.append(label);
    }
    const sources = stats.sources;
    const half = { minute: 30e3, hour: 1800e3, day: 43200e3 }[stats.bucket];
    let drawn = 0;
    for (const source of sources) {
      const points = stats.series
        .filter((s) => s.source === source && s.compliance !== null)
        .map((s) => [x(Date.parse(s.start) + half), y(s.compliance), s]);
      if (!points.length) continue;
      const colour = colourOf(source, sources);
      const path = svg("path", {
        class: "series", stroke: colour, "data-source": source,
        d: points.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`)
          .join(" "),
      });
      root.append(path);
      for (const [px, py, s] of points) {
        const dot = svg("circle", { cx: px.toFixed(1), cy: py.toFixed(1), r: 3.5, fill: colour });
        const people = Object.entries(s.people).map(([k, v]) => `${NAMES[k] || k}: ${v}`);
        const title = svg("title");
        title.textContent = `${source}, ${new Date(Date.parse(s.start)).toLocaleString()}: `
          + `${Math.round(s.compliance * 100)}% with a mask (${people.join(", ")})`;
        dot.append(title);
        root.append(dot);
      }
      drawn++;
    }
    if (!drawn) {
      const empty = svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" });
      empty.textContent = "No labelled person in this period";
      root.append(empty);
    }
    box.append(root);
    const legend = $("legend");
    legend.replaceChildren(...sources.map((source) => {
      const item = el("li", source);
      item.style.setProperty("--swatch", colourOf(source, sources));
      return item;
    }));
  }

  // ------------------------------------------------------------ the tables

  function drawCounts(stats) {
    const table = $("counts");
    const sources = stats.sources;
    const head = el("tr");
    head.append(el("th", "Class"), ...sources.map((s) => el("th", s, "num")),
      el("th", "All", "num"));
    table.tHead.replaceChildren(head);
    const classes = stats.classes.length ? stats.classes : ["with_mask", "without_mask"];
    const rows = classes.map((c) => {
      const tr = el("tr");
      tr.dataset.label = c;
      tr.append(el("th", NAMES[c] || c, `label-${c}`));
      for (const s of sources) tr.append(el("td", (stats.per_source[s] || {})[c] || 0, "num"));
      tr.append(el("td", stats.totals[c] || 0, "num total"));
      return tr;
    });
    const share = el("tr");
    share.append(el("th", "With a mask"));
    const pct = (v) => (v === null || v === undefined ? "–" : `${Math.round(v * 100)}%`);
    for (const s of sources) {
      const counts = stats.per_source[s] || {};
      const labelled = Object.entries(counts).filter(([k]) => k !== "face")
        .reduce((n, [, v]) => n + v, 0);
      share.append(el("td", pct(labelled ? (counts.with_mask || 0) / labelled : null), "num"));
    }
    share.append(el("td", pct(stats.compliance), "num"));
    table.tBodies[0].replaceChildren(...rows, share);
  }

  async function thumbnail(event) {
    if (!event.snapshot_url) return el("span", "–");
    const img = el("img", null, "thumb");
    img.alt = `Snapshot of person ${event.track_id} at ${event.source}`;
    if (!state.apiKey) {
      img.src = event.snapshot_url;
      return img;
    }
    if (!state.thumbs.has(event.id)) { // <img> cannot send the key header: fetch a blob
      try {
        const blob = await (await api(event.snapshot_url)).blob();
        state.thumbs.set(event.id, URL.createObjectURL(blob));
      } catch (_) {
        return el("span", "–");
      }
    }
    img.src = state.thumbs.get(event.id);
    return img;
  }

  async function drawEvents(events) {
    const rows = await Promise.all(events.map(async (e) => {
      const tr = el("tr");
      tr.dataset.id = e.id;
      tr.dataset.label = e.label || "face";
      tr.append(
        el("td", new Date(Date.parse(e.last_seen)).toLocaleString()),
        el("td", e.source),
        el("td", `#${e.track_id}`),
        el("td", NAMES[e.label || "face"] || e.label, `label-${e.label || "face"}`),
        el("td", e.frames, "num"),
        el("td", e.score === null ? "–" : e.score.toFixed(2), "num"),
        el("td", `${e.duration_s.toFixed(1)} s`, "num"),
      );
      const cell = el("td");
      cell.append(await thumbnail(e));
      tr.append(cell);
      return tr;
    }));
    $("events").tBodies[0].replaceChildren(...rows);
    $("no-events").hidden = events.length > 0;
  }

  function updateSources(list) {
    const select = $("source");
    for (const s of list) {
      if (state.sources.has(s)) continue;
      state.sources.add(s);
      const option = el("option", s);
      option.value = s;
      select.append(option);
    }
  }

  // ------------------------------------------------------------ loading

  async function load() {
    if (state.busy) { // a change while loading: load again once this one is done
      state.again = true;
      return;
    }
    state.busy = true;
    state.again = false;
    const period = $("period").value;
    const [bucket, span] = PERIODS[period];
    const source = $("source").value;
    const until = new Date();
    const since = new Date(until.getTime() - span * 1000);
    const q = new URLSearchParams({ bucket, since: since.toISOString(),
      until: until.toISOString() });
    const qe = new URLSearchParams({ since: since.toISOString(), limit: "25" });
    if (source) { q.set("source", source); qe.set("source", source); }
    try {
      const [stats, events] = await Promise.all([
        api(`/api/stats?${q}`).then((r) => r.json()),
        api(`/api/events?${qe}`).then((r) => r.json()),
      ]);
      updateSources([...stats.sources, ...events.events.map((e) => e.source)]);
      drawChart(stats);
      drawCounts(stats);
      await drawEvents(events.events);
      state.updates++;
      const dash = $("dash");
      dash.dataset.updates = state.updates;
      dash.dataset.events = events.events.length;
      dash.dataset.sources = stats.sources.join(",");
      dash.dataset.period = period; // what this load showed, not what is chosen now
      dash.dataset.source = source;
      $("status").textContent = `Updated ${until.toLocaleTimeString()}: `
        + `${Object.values(stats.totals).reduce((a, b) => a + b, 0)} people in this period.`;
    } catch (err) {
      $("status").textContent = `Could not load: ${err.message}`;
    } finally {
      state.busy = false;
      if (state.again) load();
    }
  }

  $("period").addEventListener("change", load);
  $("source").addEventListener("change", load);
  $("refresh-note").textContent = `Refreshes every ${refreshSeconds} s.`;
  load();
  setInterval(load, refreshSeconds * 1000);
})();
