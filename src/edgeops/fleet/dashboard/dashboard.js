// edgeops fleet dashboard: reads api/fleet every two seconds and draws it with Plotly (static/plotly.min.js).
//
// No build step and no framework. Every string a device sent (ids, channels, reasons) goes through
// escapeHtml before it reaches innerHTML or a Plotly label. For tests: each chart container gets
// data-ready="1" once drawn, and <body data-first-chart> the performance.now() of the first chart drawn.
"use strict";

(() => {
  const POLL_MS = 2000;
  const STALE_AFTER_MS = 10000;

  // The palette lives in dashboard.css; the charts read the same variables.
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(`--${name}`).trim();
  const C = {
    text: color("text"), muted: color("muted"), faint: color("faint"), grid: color("grid"),
    panel: color("panel"), edge: color("panel-edge"),
    blue: color("blue"), teal: color("teal"), green: color("green"), amber: color("amber"),
    orange: color("orange"), red: color("red"), purple: color("purple"), pink: color("pink"),
  };
  const SERIES = [C.blue, C.teal, C.purple, C.amber, C.pink, C.green, C.orange];
  const CLASSES = [C.blue, C.amber, C.teal, C.purple, C.pink, C.green, C.orange];
  const FONT = css.getPropertyValue("--font").trim();
  const PLOT_CONFIG = {displayModeBar: false, responsive: true};

  const EMPTY = {
    generated_at: null, devices: [], releases: [], updates: [], refusal_reasons: {}, latency: [],
    class_mix: {labels: [], series: []}, drift: [], drift_threshold: 0.2,
    counters: {received: 0, stored: 0, duplicates: 0, rejected: {}},
  };

  // Helpers ------------------------------------------------------------------------------------------

  const ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"};
  function escapeHtml(value) {
    return String(value ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);
  }

  const numberFormat = new Intl.NumberFormat("en-US");
  const fmt = (n) => numberFormat.format(n ?? 0);
  const versionLabel = (version) => (version == null ? "none" : `v${version}`);
  const byVersion = (a, b) => (a == null) - (b == null) || (a ?? 0) - (b ?? 0);
  const sum = (values) => values.reduce((total, v) => total + (v || 0), 0);
  const unique = (values) => [...new Set(values)];
  const $ = (selector) => document.querySelector(selector);

  function duration(seconds) {
    if (seconds == null || !isFinite(seconds)) return "–";
    const s = Math.max(0, seconds);
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function normalise(doc) {
    const merged = {...EMPTY, ...(doc || {})};
    merged.class_mix = {...EMPTY.class_mix, ...(merged.class_mix || {})};
    merged.counters = {...EMPTY.counters, ...(merged.counters || {})};
    merged.counters.rejected = merged.counters.rejected || {};
    for (const key of ["devices", "releases", "updates", "latency", "drift", "rollouts", "retraining"]) {
      merged[key] = merged[key] || [];
    }
    merged.refusal_reasons = merged.refusal_reasons || {};
    return merged;
  }

  // Charts -------------------------------------------------------------------------------------------

  function layout(extra = {}) {
    const axis = {
      gridcolor: C.grid, zerolinecolor: C.edge, linecolor: C.edge, tickcolor: C.edge,
      tickfont: {color: C.muted, size: 11}, automargin: true, fixedrange: true,
    };
    return {
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: {family: FONT, color: C.text, size: 12},
      margin: {l: 8, r: 8, t: 34, b: 8, pad: 2},
      bargap: 0.3,
      showlegend: true,
      legend: {
        orientation: "h", x: 0, y: 1.02, xanchor: "left", yanchor: "bottom",
        font: {color: C.muted, size: 11}, bgcolor: "rgba(0,0,0,0)",
      },
      hoverlabel: {bgcolor: C.panel, bordercolor: C.edge, font: {color: C.text, family: FONT}},
      ...extra,
      xaxis: {...axis, ...(extra.xaxis || {})},
      yaxis: {...axis, ...(extra.yaxis || {})},
    };
  }

  function emptyLayout(message, extra = {}) {
    return layout({
      ...extra,
      showlegend: false,
      xaxis: {visible: false},
      yaxis: {visible: false},
      annotations: [{
        text: escapeHtml(message), xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false,
        font: {color: C.muted, size: 13},
      }],
    });
  }

  // Plotly.react only what changed since the last poll: most polls change no chart at all.
  const drawnWith = new WeakMap();
  async function draw(container, traces, chartLayout) {
    const signature = JSON.stringify([traces, chartLayout]);
    if (drawnWith.get(container) !== signature) {
      drawnWith.set(container, signature);
      await Plotly.react(container, traces, chartLayout, PLOT_CONFIG);
    }
    container.dataset.ready = "1";
    if (!document.body.dataset.firstChart) document.body.dataset.firstChart = performance.now().toFixed(1);
  }

  // Devices per release, one group of bars per channel · track (a two-level axis: group, then version).
  function releasesChart(doc) {
    const container = $("#chart-releases");
    if (!doc.releases.length) return draw(container, [], emptyLayout("no device has reported a release yet"));
    const groupOf = (r) => `${r.channel} · ${r.track}`;
    const groups = unique(doc.releases.map(groupOf)).sort();
    const bars = groups.flatMap((group, i) => {
      const releases = doc.releases.filter((r) => groupOf(r) === group);
      // Plotly orders a two-level axis by where each inner label first appears in any group; an invisible
      // suffix per group keeps every group's versions in their own (ascending) order.
      const suffix = "\u200b".repeat(i);
      return unique(releases.map((r) => r.version)).sort(byVersion).map((version) => ({
        group: escapeHtml(group),
        version: versionLabel(version) + suffix,
        devices: sum(releases.filter((r) => r.version === version).map((r) => r.devices)),
        color: SERIES[i % SERIES.length],
      }));
    });
    // One trace keeps the bars in this order (several would share, and reorder, the inner categories).
    return draw(container, [{
      type: "bar", x: [bars.map((b) => b.group), bars.map((b) => b.version)], y: bars.map((b) => b.devices),
      marker: {color: bars.map((b) => b.color)},
      texttemplate: "%{y}", textposition: "outside", cliponaxis: false, textfont: {color: C.muted, size: 11},
      hovertemplate: "%{x}<br>%{y} devices<extra></extra>",
    }], layout({
      showlegend: false,
      margin: {l: 8, r: 8, t: 20, b: 8, pad: 2},
      bargap: 0.25,
      xaxis: {type: "multicategory", dividercolor: C.edge, tickfont: {color: C.text, size: 11}},
      yaxis: {title: {text: "devices", font: {color: C.muted, size: 11}}, rangemode: "tozero"},
    }));
  }

  const OUTCOMES = [
    {key: "installed", name: "installed", stack: "update", color: C.green},
    {key: "refused", name: "refused", stack: "update", color: C.red},
    {key: "fell_back", name: "fell back", stack: "update", color: C.amber},
    {key: "smoke_passed", name: "smoke test passed", stack: "smoke", color: C.teal},
    {key: "smoke_failed", name: "smoke test failed", stack: "smoke", color: C.pink},
  ];

  function updatesChart(doc) {
    const container = $("#chart-updates");
    const rows = doc.updates.filter((u) => sum(OUTCOMES.map((o) => u[o.key])) > 0);
    if (!rows.length) return draw(container, [], emptyLayout("no update events yet"));
    rows.sort((a, b) => byVersion(a.version, b.version));
    // Two stacks per version on a two-level axis: the update path's outcomes, and the smoke tests'.
    const outer = rows.flatMap((u) => [versionLabel(u.version), versionLabel(u.version)]);
    const inner = rows.flatMap(() => ["update", "smoke"]);
    const totals = rows.flatMap((u) => ["update", "smoke"].map((stack) =>
      sum(OUTCOMES.filter((o) => o.stack === stack).map((o) => u[o.key]))));
    const traces = OUTCOMES.map((outcome) => {
      const counts = rows.flatMap((u) => ["update", "smoke"].map((stack) =>
        (stack === outcome.stack ? u[outcome.key] || 0 : null)));
      return {
        type: "bar", name: outcome.name, x: [outer, inner],
        y: counts.map((n, i) => (n ? (100 * n) / totals[i] : null)),
        customdata: counts,
        marker: {color: outcome.color},
        hovertemplate: "%{x}<br>%{fullData.name}: %{customdata} (%{y:.0f}%)<extra></extra>",
      };
    });
    // Shares hide volume: each bar's number of events sits on top of it.
    const annotations = totals.map((total, i) => ({
      x: [outer[i], inner[i]], y: 100, yanchor: "bottom", text: fmt(total), showarrow: false,
      font: {color: C.muted, size: 10},
    }));
    return draw(container, traces, layout({
      barmode: "stack",
      bargap: 0.2,
      annotations,
      legend: {...layout().legend, traceorder: "normal"},
      xaxis: {type: "multicategory", tickangle: 0, tickfont: {color: C.muted, size: 10}, dividercolor: C.edge},
      yaxis: {range: [0, 110], tickvals: [0, 25, 50, 75, 100], ticktext: ["0%", "25%", "50%", "75%", "100%"]},
    }));
  }

  function refusalsChart(doc) {
    const container = $("#chart-refusals");
    const reasons = Object.entries(doc.refusal_reasons).filter(([, n]) => n > 0).sort((a, b) => a[1] - b[1]);
    if (!reasons.length) return draw(container, [], emptyLayout("no refused updates"));
    const total = sum(reasons.map(([, n]) => n));
    return draw(container, [{
      type: "bar", orientation: "h",
      y: reasons.map(([reason]) => escapeHtml(reason)), x: reasons.map(([, n]) => n),
      marker: {color: reasons.map((_, i) => (i === reasons.length - 1 ? C.red : C.orange))},
      customdata: reasons.map(([, n]) => (100 * n) / total),
      texttemplate: "%{x}", textposition: "outside", cliponaxis: false, textfont: {color: C.muted, size: 11},
      hovertemplate: "%{y}: %{x} refusals (%{customdata:.0f}%)<extra></extra>",
    }], layout({
      showlegend: false,
      margin: {l: 8, r: 28, t: 12, b: 8, pad: 4},
      bargap: 0.35,
      xaxis: {title: {text: "refused updates", font: {color: C.muted, size: 11}}, rangemode: "tozero"},
      yaxis: {type: "category", gridcolor: "rgba(0,0,0,0)", tickfont: {color: C.text, size: 12}},
    }));
  }

  function latencyChart(doc) {
    const container = $("#chart-latency");
    const rows = [...doc.latency].sort((a, b) => byVersion(a.version, b.version));
    if (!rows.length) return draw(container, [], emptyLayout("no inference statistics yet"));
    const x = rows.map((r) => versionLabel(r.version));
    const bar = (name, key, barColor) => ({
      type: "bar", name, x, y: rows.map((r) => r[key]), marker: {color: barColor},
      customdata: rows.map((r) => fmt(r.inferences)),
      texttemplate: "%{y:.2f}", textposition: "outside", cliponaxis: false, textfont: {color: C.muted, size: 10},
      hovertemplate: `%{x} ${name}: %{y:.3f} ms<br>over %{customdata} inferences<extra></extra>`,
    });
    return draw(container, [bar("p50", "p50_ms", C.blue), bar("p95", "p95_ms", C.purple)], layout({
      barmode: "group",
      xaxis: {type: "category", title: {text: "release version", font: {color: C.muted, size: 11}}},
      yaxis: {title: {text: "ms per inference", font: {color: C.muted, size: 11}}, rangemode: "tozero"},
    }));
  }

  function classesChart(doc) {
    const container = $("#chart-classes");
    const {labels, series} = doc.class_mix;
    if (!labels.length || !series.length) return draw(container, [], emptyLayout("no predictions reported yet"));
    const x = series.map((bucket) => bucket.at);
    const totals = series.map((bucket) => sum(labels.map((label) => bucket.counts[label])));
    const traces = labels.map((label, i) => {
      const counts = series.map((bucket) => bucket.counts[label] || 0);
      return {
        type: "scatter", mode: "lines", stackgroup: "mix", name: escapeHtml(label), x,
        y: counts.map((n, j) => (totals[j] ? (100 * n) / totals[j] : 0)),
        customdata: counts,
        line: {width: 1.5, color: CLASSES[i % CLASSES.length], shape: "spline", smoothing: 0.4},
        hovertemplate: "%{fullData.name}: %{y:.1f}% (%{customdata})<extra></extra>",
      };
    });
    // The fleet's volume per bucket under the mix, so a quiet minute's mix is read as such.
    traces.push({
      type: "bar", name: "predictions", x, y: totals, xaxis: "x", yaxis: "y2", showlegend: false,
      marker: {color: C.faint}, hovertemplate: "%{y} predictions<extra></extra>",
    });
    return draw(container, traces, layout({
      hovermode: "x unified",
      bargap: 0.15,
      legend: {...layout().legend, traceorder: "normal"},
      xaxis: {type: "date", showgrid: false, anchor: "y2"},
      yaxis: {
        domain: [0.3, 1], range: [0, 100], tickvals: [0, 50, 100], ticktext: ["0%", "50%", "100%"],
        title: {text: "share", font: {color: C.muted, size: 11}},
      },
      yaxis2: {
        ...layout().yaxis, domain: [0, 0.22], rangemode: "tozero", nticks: 3,
        title: {text: "count", font: {color: C.muted, size: 11}},
      },
    }));
  }

  // One small card per chamber, made once and redrawn in place.
  const driftCards = new Map();
  function driftCard(chamber) {
    if (driftCards.has(chamber)) return driftCards.get(chamber);
    const card = document.createElement("div");
    card.className = "drift-card";
    card.innerHTML = `<h3><span class="name">${escapeHtml(chamber)}</span><span class="psi"></span></h3>` +
      `<div class="chart" data-chart="drift"></div>`;
    card.dataset.chamber = chamber;
    $("#drift-grid").appendChild(card);
    const entry = {card, psi: card.querySelector(".psi"), chart: card.querySelector(".chart")};
    driftCards.set(chamber, entry);
    return entry;
  }

  async function driftCharts(doc) {
    const grid = $("#drift-grid");
    const threshold = doc.drift_threshold;
    const present = new Set(doc.drift.map((d) => d.chamber));
    for (const [chamber, entry] of driftCards) {
      if (!present.has(chamber)) { entry.card.remove(); driftCards.delete(chamber); }
    }
    let empty = grid.querySelector(".drift-empty");
    if (!doc.drift.length && !empty) {
      empty = document.createElement("div");
      empty.className = "drift-empty";
      empty.textContent = "No training reference loaded: the service compares chambers once it has one.";
      grid.appendChild(empty);
    } else if (doc.drift.length && empty) {
      empty.remove();
    }
    for (const item of doc.drift) {
      const entry = driftCard(item.chamber);
      const flagged = Boolean(item.flagged);
      entry.card.classList.toggle("alert", flagged);
      entry.card.dataset.flagged = flagged ? "1" : "0";
      const few = item.psi != null && !flagged && item.samples < doc.drift_min_samples;
      entry.psi.textContent = item.psi == null ? "no fleet data yet" :
        `PSI ${item.psi.toFixed(3)}${flagged ? " · drift" : few ? ` · only ${fmt(item.samples)} samples` : ""}`;
      const edges = item.edges.map((pa) => pa / 1000);
      const centres = edges.slice(0, -1).map((low, i) => (low + edges[i + 1]) / 2);
      const widths = edges.slice(0, -1).map((low, i) => edges[i + 1] - low);
      const fleetColor = flagged ? C.red : C.teal;
      const traces = [
        {
          type: "bar", name: "training", x: centres, y: item.training, width: widths,
          marker: {color: "rgba(141,150,160,0.35)", line: {color: "rgba(141,150,160,0.6)", width: 1}},
          hovertemplate: "training %{x:.2f} kPa: %{y:.1%}<extra></extra>",
        },
        {
          type: "scatter", mode: "lines", name: "fleet", x: edges, y: [...item.fleet, item.fleet.at(-1) ?? 0],
          line: {shape: "hv", color: fleetColor, width: 2}, fill: "tozeroy",
          fillcolor: flagged ? "rgba(248,81,73,0.18)" : "rgba(57,197,207,0.15)",
          hovertemplate: "fleet from %{x:.2f} kPa: %{y:.1%}<extra></extra>",
        },
      ];
      await draw(entry.chart, traces, layout({
        margin: {l: 4, r: 6, t: 22, b: 4, pad: 2},
        bargap: 0,
        legend: {orientation: "h", x: 1, xanchor: "right", y: 1.02, yanchor: "bottom", font: {color: C.muted, size: 10}},
        xaxis: {range: [edges[0], edges.at(-1)], ticksuffix: " kPa", nticks: 6, tickfont: {color: C.muted, size: 10}},
        yaxis: {tickformat: ".0%", rangemode: "tozero", nticks: 4, tickfont: {color: C.muted, size: 10}},
      }));
    }
  }

  // Tiles, table, status ----------------------------------------------------------------------------

  function setField(name, text) {
    for (const node of document.querySelectorAll(`[data-field="${name}"]`)) node.textContent = text;
  }

  function renderTiles(doc) {
    const online = doc.devices.filter((d) => d.online).length;
    const total = doc.devices.length;
    setField("online", fmt(online));
    setField("total", fmt(total));
    $('[data-field="online-bar"]').style.width = total ? `${(100 * online) / total}%` : "0";
    const counters = doc.counters;
    setField("stored", fmt(counters.stored));
    setField("received", `of ${fmt(counters.received)} received`);
    setField("duplicates", fmt(counters.duplicates));
    const rejected = Object.entries(counters.rejected).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
    setField("rejected", fmt(sum(rejected.map(([, n]) => n))));
    $('[data-field="rejected-reasons"]').innerHTML = rejected.length
      ? rejected.map(([reason, n]) => `<span class="chip">${escapeHtml(reason)} ${fmt(n)}</span>`).join("")
      : '<span class="chip none">none</span>';
    const flagged = doc.drift.filter((d) => d.flagged);
    setField("drift", fmt(flagged.length));
    setField("drift-detail", flagged.length
      ? `PSI > ${doc.drift_threshold}: ${flagged.map((d) => d.chamber).join(", ")}`
      : doc.drift.length ? `${doc.drift.length} chambers within PSI ${doc.drift_threshold}` : "no reference yet");
    $("#tile-drift").classList.toggle("alert", flagged.length > 0);
    $("#waiting").hidden = total > 0;
  }

  let lastDoc = normalise(null);
  function renderRollouts(doc) {
    $("#rollouts-panel").hidden = !doc.rollouts.length;
    const rows = doc.rollouts.flatMap((r) => r.steps.map((step, index) => {
      const decision = step.decision || (step.version ? "baking" : "waiting");
      const first = index === 0;
      const rolledBack = r.rollback_version ? ` · rolled back with v${escapeHtml(r.rollback_version)}` : "";
      return "<tr>" +
        `<td class="id">${first ? `${escapeHtml(r.model)} · ${escapeHtml(r.channel)}` : ""}</td>` +
        `<td>${first ? `<span class="badge ${r.status === "halted" ? "offline" : "online"}">${escapeHtml(r.status)}</span>${rolledBack}` : ""}</td>` +
        `<td>${escapeHtml(step.percent)} %</td>` +
        `<td>${step.version ? `v${escapeHtml(step.version)}` : "–"}</td>` +
        `<td>${escapeHtml(decision)}</td>` +
        `<td class="muted">${escapeHtml(step.why || "")}</td></tr>`;
    }));
    $("#rollout-table tbody").innerHTML = rows.join("");
  }

  function renderRetraining(doc) {
    $("#retrain-panel").hidden = !doc.retraining.length;
    $("#retrain-table tbody").innerHTML = doc.retraining.map((t) => "<tr>" +
      `<td class="muted">${escapeHtml(new Date(t.at).toLocaleString())}</td>` +
      `<td>${Object.entries(t.chambers || {}).map(([c, psi]) => `${escapeHtml(c)} ${escapeHtml(Number(psi).toFixed(2))}`).join(", ")}</td>` +
      `<td class="id">${escapeHtml(t.session || "–")}</td>` +
      `<td class="muted">${escapeHtml(t.status)}</td>` +
      `<td>${[runLink(t.mlflow_run, "MLflow run"), runLink(t.log, "pipeline run")].filter(Boolean).join(" · ") || "–"}</td></tr>`).join("");
  }

  // A web address becomes a link; a log file on the service's machine is shown as its path.
  function runLink(where, text) {
    if (!where) return "";
    if (/^https?:\/\//.test(where)) return `<a href="${escapeHtml(where)}" target="_blank" rel="noopener">${text}</a>`;
    return `<span class="muted" title="log file">log ${escapeHtml(where)}</span>`;
  }

  function renderDevices(doc) {
    const now = doc.generated_at ? Date.parse(doc.generated_at) : Date.now();
    const filter = $("#device-filter").value.trim().toLowerCase();
    const devices = doc.devices
      .map((d) => ({...d, seen: Date.parse(d.last_seen)}))
      .sort((a, b) => b.seen - a.seen || String(a.device_id).localeCompare(String(b.device_id)));
    const shown = filter
      ? devices.filter((d) => [d.device_id, d.channel, d.track, d.model, versionLabel(d.version)]
        .some((value) => String(value ?? "").toLowerCase().includes(filter)))
      : devices;
    // One string, one innerHTML: a few hundred rows stay well under a frame.
    const rows = shown.map((d) => {
      const state = d.online ? "online" : "offline";
      const fallback = d.role === "previous" ? '<span class="badge fallback" title="running its last known good model">fallback</span>' : "";
      const outbox = d.dropped ? `${fmt(d.queued)} · ${fmt(d.dropped)} dropped` : fmt(d.queued);
      return `<tr data-device="${escapeHtml(d.device_id)}">` +
        `<td><span class="badge ${state}">${state}</span></td>` +
        `<td class="id">${escapeHtml(d.device_id)}</td>` +
        `<td>${escapeHtml(d.channel)} · ${escapeHtml(d.track)}</td>` +
        `<td>${escapeHtml(versionLabel(d.version))}${fallback}</td>` +
        `<td class="muted">${duration((now - d.seen) / 1000)} ago</td>` +
        `<td class="muted">${duration(d.uptime_s)}</td>` +
        `<td class="${d.dropped ? "warn" : "muted"}">${outbox}</td></tr>`;
    });
    $("#device-table tbody").innerHTML = rows.length ? rows.join("")
      : `<tr><td class="empty" colspan="7">${doc.devices.length ? "no device matches the filter" : "waiting for devices…"}</td></tr>`;
    $("#device-count").textContent = filter
      ? `${fmt(shown.length)} of ${fmt(devices.length)} · newest first`
      : `${fmt(devices.length)} · newest first`;
  }

  let lastSuccess = 0;
  function setStatus(state, text) {
    $("#status").dataset.state = state;
    $("#status-text").textContent = text;
  }

  async function render(doc) {
    lastDoc = doc;
    renderTiles(doc);
    renderDevices(doc);
    renderRollouts(doc);
    renderRetraining(doc);
    const at = doc.generated_at ? new Date(doc.generated_at).toLocaleTimeString() : "–";
    $("#footer").textContent = `data as of ${at} · refreshed every ${POLL_MS / 1000} s · ` +
      `drift flagged above PSI ${doc.drift_threshold}`;
    await window.plotlyLoaded;  // index.html loads Plotly while the tiles and the table are drawn
    await releasesChart(doc);
    await updatesChart(doc);
    await refusalsChart(doc);
    await latencyChart(doc);
    await classesChart(doc);
    await driftCharts(doc);
  }

  async function fetchFleet(request) {
    let response;
    try {
      response = await (request || fetch("api/fleet", {cache: "no-store"}));
    } catch (error) {
      throw new Error(`cannot reach api/fleet (${error.message})`);
    }
    if (!response.ok) throw new Error(`api/fleet answered HTTP ${response.status}`);
    return normalise(await response.json());
  }

  // Polling: one request at a time; the next is scheduled when this one is done.
  let rendered = false;
  async function refresh(request) {
    try {
      if (!document.hidden || !rendered) {
        const doc = await fetchFleet(request);
        rendered = true;
        await render(doc);
        lastSuccess = Date.now();
        setStatus("live", `live · ${fmt(doc.devices.length)} devices`);
      }
    } catch (error) {
      setStatus("error", error.message);
      if (!rendered) {
        rendered = true;
        await render(normalise(null)).catch(() => {});  // the empty charts, rather than a blank page
        $("#waiting").hidden = true;  // not "waiting for devices": the service did not answer
      }
    } finally {
      setTimeout(refresh, POLL_MS);
    }
  }

  setInterval(() => {
    if (lastSuccess && Date.now() - lastSuccess > STALE_AFTER_MS && $("#status").dataset.state === "live") {
      setStatus("stale", `no answer for ${Math.round((Date.now() - lastSuccess) / 1000)} s`);
    }
  }, 1000);
  $("#device-filter").addEventListener("input", () => renderDevices(lastDoc));

  refresh(window.firstFleetRequest);
})();
