// Promethios Native console: plain browser JavaScript over the JSON API, Chart.js for plots.
"use strict";

const KEY_STORE = "promethios.apiKey";
const REFRESH_MS = 5000;
const state = { key: null, user: null, agents: [], selected: null, charts: {}, timer: null };
const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${state.key}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok || data.success === false) {
    const err = new Error((data.error && data.error.message) || `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return data.data;
}

const fmt = (x, nd = 3) => (x === null || x === undefined ? "—" : Number(x).toFixed(nd));
const pct = (x) => (x === null || x === undefined ? "—" : `${(100 * x).toFixed(1)}%`);
const text = (tag, content, cls) => {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
};

// -- sign in ------------------------------------------------------------------
async function signIn(key) {
  state.key = key;
  const data = await api("GET", "/native-llm/dashboard/agents");
  state.user = data.user_id;
  sessionStorage.setItem(KEY_STORE, key);
  $("signin-panel").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  $("whoami").textContent = `signed in as ${state.user}`;
  renderCards(data.agents);
  if (data.agents.length && !state.selected) selectAgent(data.agents[0].agent_id);
  refreshComparison().catch(() => {});
  loadUpstreams().catch(() => {});
}

// The upstreams the operator registered, offered as the wrapped model's choices.
async function loadUpstreams() {
  const data = await api("GET", "/native-llm/upstreams");
  const list = $("upstream-names");
  list.replaceChildren(...data.upstreams.map((u) => {
    const o = document.createElement("option");
    o.value = u.name;
    o.label = u.models ? u.models.join(", ") : "any model";
    return o;
  }));
}

function signOut() {
  sessionStorage.removeItem(KEY_STORE);
  location.reload();
}

// -- agent cards (the seed's NativeLLMAgentCard) -------------------------------
function renderCards(agents) {
  state.agents = agents;
  const box = $("agent-cards");
  box.replaceChildren();
  if (!agents.length) box.append(text("p", "No agents yet: create one below.", "muted"));
  for (const a of agents) {
    const card = document.createElement("div");
    card.className = "card" + (a.agent_id === state.selected ? " selected" : "");
    card.dataset.agentId = a.agent_id;
    const h = text("h3", a.name + " ");
    h.append(text("span", a.status, "badge " + a.status));
    h.append(text("span", a.backend, "badge " + a.backend));
    card.append(h, text("div", a.agent_id, "muted"));
    const dl = document.createElement("dl");
    const rows = [
      ["Trust score", fmt(a.trust_score)],
      ["Compliance", pct(a.compliance_rate)],
      ["Interactions", a.total_interactions],
      ["Violations", a.violation_count],
      ["Interventions", a.governance_interventions],
      ["Mode", a.compliance_mode],
    ];
    for (const [k, v] of rows) dl.append(text("dt", k), text("dd", String(v)));
    card.append(dl);
    card.addEventListener("click", () => selectAgent(a.agent_id));
    box.append(card);
  }
}

async function refreshCards() {
  const data = await api("GET", "/native-llm/dashboard/agents");
  renderCards(data.agents);
  showDeployment(currentAgent());
}

function showDeployment(a) {
  const live = Boolean(a && a.deployment_url);
  $("deploy-btn").textContent = live ? "Redeploy" : "Deploy";
  $("undeploy-btn").hidden = !live;
  $("deploy-status").textContent = live ? `live at ${a.deployment_url}` : "not deployed";
}

const currentAgent = () => state.agents.find((a) => a.agent_id === state.selected);

// -- create (the seed's CreationWizard) ----------------------------------------
async function createAgent(ev) {
  ev.preventDefault();
  $("create-error").textContent = "";
  const config = {
    name: $("new-name").value,
    description: $("new-description").value || null,
    compliance_mode: $("new-mode").value,
    trust_threshold: Number($("new-threshold").value),
    max_tokens: Number($("new-max-tokens").value),
    temperature: Number($("new-temperature").value),
  };
  if ($("new-system-prompt").value) config.system_prompt = $("new-system-prompt").value;
  if ($("new-backend").value === "openai") {
    config.backend = { type: "openai", upstream: $("new-upstream").value, model: $("new-upstream-model").value };
  }
  try {
    const agent = await api("POST", "/native-llm/agent/create", { config });
    await refreshCards();
    selectAgent(agent.agent_id);
  } catch (err) {
    $("create-error").textContent = err.message;
  }
}

// -- one agent: chat, deploy, reports, charts ---------------------------------
function selectAgent(agentId) {
  state.selected = agentId;
  const a = currentAgent();
  $("agent-panel").hidden = false;
  $("agent-title").textContent = a ? `${a.name} (${a.agent_id})` : agentId;
  showDeployment(a);
  $("chat-log").replaceChildren();
  for (const card of document.querySelectorAll(".card")) {
    card.classList.toggle("selected", card.dataset.agentId === agentId);
  }
  refreshCharts();
  clearInterval(state.timer);
  state.timer = setInterval(() => {
    refreshCharts().catch(() => {});
    refreshComparison().catch(() => {});
  }, REFRESH_MS);
}

async function sendChat(ev) {
  ev.preventDefault();
  const input = $("chat-input");
  const message = input.value.trim();
  if (!message || !state.selected) return;
  input.value = "";
  $("chat-send").disabled = true;
  const log = $("chat-log");
  log.append(text("div", `you: ${message}`, "msg user"));
  try {
    const r = await api("POST", `/native-llm/agent/${state.selected}/chat`, { message });
    const g = r.governance_metrics;
    const div = text("div", `agent: ${r.response}`, "msg agent");
    div.append(
      document.createElement("br"),
      text(
        "span",
        `trust ${fmt(g.trust_score)} · compliance ${pct(g.compliance_rate)} · ` +
          `${g.policy_violations.length} violation(s) · ${g.action} · ${Math.round(g.response_time_ms)} ms`,
        "gov"
      )
    );
    log.append(div);
  } catch (err) {
    log.append(text("div", `error: ${err.message}`, "msg error"));
  } finally {
    $("chat-send").disabled = false;
    log.scrollTop = log.scrollHeight;
  }
  await Promise.all([refreshCharts(), refreshCards()]);
}

async function deploy() {
  if (!state.selected) return;
  $("deploy-btn").disabled = true;
  try {
    const d = await api("POST", `/native-llm/agent/${state.selected}/deploy`, {});
    await refreshCards();
    $("deploy-status").textContent = `${d.status}: live at ${d.deployment_url}`;
  } catch (err) {
    $("deploy-status").textContent = `deploy failed: ${err.message}`;
  } finally {
    $("deploy-btn").disabled = false;
  }
}

async function undeploy() {
  if (!state.selected) return;
  $("undeploy-btn").disabled = true;
  try {
    await api("POST", `/native-llm/agent/${state.selected}/undeploy`, {});
    await refreshCards();
  } catch (err) {
    $("deploy-status").textContent = `undeploy failed: ${err.message}`;
  } finally {
    $("undeploy-btn").disabled = false;
  }
}

function windowParams() {
  const [span, bucket] = $("window").value.split(":").map(Number);
  const to = new Date(Date.now() + 1000);
  const from = new Date(to.getTime() - span * 1000);
  return { from: from.toISOString(), to: to.toISOString(), bucket };
}

async function downloadReport(format) {
  const { from, to } = windowParams();
  const q = new URLSearchParams({ from, to, format });
  const resp = await fetch(`/native-llm/agent/${state.selected}/report?${q}`, {
    headers: { Authorization: `Bearer ${state.key}` },
  });
  const blob = await resp.blob();
  const name = (resp.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name ? name[1] : `report.${format}`;
  a.click();
  URL.revokeObjectURL(a.href);
}

// -- charts ---------------------------------------------------------------------
const PALETTE = ["#3b5bdb", "#e8590c", "#2b8a3e", "#c2255c", "#7048e8", "#1098ad", "#f59f00"];

function chart(id, type, labels, datasets, yOpts = {}, stacked = true) {
  const canvas = $(id);
  const old = state.charts[id];
  if (old) {
    old.data.labels = labels;
    old.data.datasets = datasets;
    old.update("none");
  } else {
    state.charts[id] = new Chart(canvas, {
      type,
      data: { labels, datasets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        spanGaps: true,
        plugins: { legend: { display: datasets.length > 1 || type === "bar" } },
        scales: { x: { stacked: stacked && type === "bar", ticks: { maxTicksLimit: 8 } }, y: { beginAtZero: true, stacked: stacked && type === "bar", ...yOpts } },
      },
    });
  }
  const points = datasets.reduce((n, d) => n + d.data.filter((v) => v !== null && v !== 0).length, 0);
  canvas.dataset.points = String(points);
}

const line = (label, data, i) => ({ label, data, borderColor: PALETTE[i], backgroundColor: PALETTE[i], pointRadius: 3, tension: 0.2 });
const bar = (label, data, i) => ({ label, data, backgroundColor: PALETTE[i % PALETTE.length] });

async function refreshCharts() {
  if (!state.selected) return;
  const { from, to, bucket } = windowParams();
  const q = new URLSearchParams({ from, to, bucket });
  const ts = await api("GET", `/native-llm/agent/${state.selected}/timeseries?${q}`);
  const b = ts.buckets;
  const labels = b.map((x) => new Date(x.start).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }));
  chart("chart-trust", "line", labels, [line("trust score", b.map((x) => x.trust_score), 0)], { max: 1 });
  chart("chart-compliance", "line", labels, [line("compliance rate", b.map((x) => x.compliance_rate), 2)], { max: 1 });
  chart("chart-latency", "line", labels, [
    line("p50", b.map((x) => x.latency_ms_p50), 0),
    line("p95", b.map((x) => x.latency_ms_p95), 1),
  ]);
  chart("chart-throughput", "bar", labels, [bar("interactions / min", b.map((x) => x.throughput_per_min), 0)]);
  const categories = [...new Set(b.flatMap((x) => Object.keys(x.violations_by_category)))].sort();
  chart(
    "chart-violations",
    "bar",
    labels,
    categories.length
      ? categories.map((c, i) => bar(c, b.map((x) => x.violations_by_category[c] || 0), i + 1))
      : [bar("violations", b.map(() => 0), 1)]
  );
  chart("chart-interventions", "bar", labels, [
    bar("interventions", b.map((x) => x.interventions), 3),
    bar("blocked", b.map((x) => x.blocked), 1),
  ]);
  renderSummary(ts.summary);
}

// -- native vs wrapped (the seed's comparative analysis), from stored interactions --
const KINDS = ["native", "wrapped"];

async function refreshComparison() {
  const { from, to } = windowParams();
  const data = await api("GET", `/native-llm/reports/comparison?${new URLSearchParams({ from, to })}`);
  const g = data.groups;
  const labels = KINDS.map((k) => `${k} (${g[k].agents} agents, ${g[k].interactions} interactions)`);
  const of = (key, scale = 1) => KINDS.map((k) => (g[k][key] === null ? null : g[k][key] * scale));
  chart("chart-cmp-latency", "bar", labels, [bar("p50", of("latency_ms_p50"), 0), bar("p95", of("latency_ms_p95"), 1)], {}, false);
  chart("chart-cmp-trust", "bar", labels, [
    bar("trust score", of("trust_score_mean", 100), 0),
    bar("compliance", of("compliance_rate_mean", 100), 2),
  ], { max: 100 }, false);
  chart("chart-cmp-interventions", "bar", labels, [
    bar("interventions", of("governance_interventions"), 3),
    bar("blocked", of("blocked"), 1),
    bar("errors", of("errors"), 4),
  ], {}, false);
  chart("chart-cmp-bypass", "bar", labels, [
    bar("detected", of("injection_attempts_detected"), 5),
    bar("answered", of("injection_attempts_answered"), 1),
  ], {}, false);
  const dl = document.createElement("dl");
  for (const k of KINDS) {
    const r = g[k];
    dl.append(
      text("dt", `${k}: p50 / p95`),
      text("dd", `${fmt(r.latency_ms_p50, 0)} / ${fmt(r.latency_ms_p95, 0)} ms`),
      text("dt", `${k}: trust / compliance`),
      text("dd", `${fmt(r.trust_score_mean)} / ${pct(r.compliance_rate_mean)}`),
      text("dt", `${k}: injection attempts answered`),
      text("dd", `${r.injection_attempts_answered} of ${r.injection_attempts_detected}`)
    );
  }
  $("comparison-table").replaceChildren(dl);
}

function renderSummary(s) {
  const dl = document.createElement("dl");
  const rows = [
    ["Interactions (window)", s.interactions],
    ["Mean trust score", fmt(s.trust_score_mean)],
    ["Mean compliance", pct(s.compliance_rate_mean)],
    ["Latency p50 / p95", `${fmt(s.latency_ms_p50, 0)} / ${fmt(s.latency_ms_p95, 0)} ms`],
    ["Violations", s.violations],
    ["Interventions", s.governance_interventions],
    ["Tokens in / out", `${s.prompt_tokens} / ${s.completion_tokens}`],
  ];
  for (const [k, v] of rows) dl.append(text("dt", k), text("dd", String(v)));
  $("summary").replaceChildren(dl);
}

// -- wiring ---------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("signin-error").textContent = "";
    try {
      await signIn($("api-key").value.trim());
    } catch (err) {
      $("signin-error").textContent = err.status === 401 ? "That API key is not valid." : err.message;
    }
  });
  $("sign-out").addEventListener("click", signOut);
  $("create-form").addEventListener("submit", createAgent);
  $("chat-form").addEventListener("submit", sendChat);
  $("deploy-btn").addEventListener("click", deploy);
  $("undeploy-btn").addEventListener("click", undeploy);
  $("window").addEventListener("change", () => {
    refreshCharts();
    refreshComparison();
  });
  $("new-backend").addEventListener("change", () => {
    for (const el of document.querySelectorAll(".upstream")) el.hidden = $("new-backend").value !== "openai";
  });
  $("report-json").addEventListener("click", (ev) => { ev.preventDefault(); downloadReport("json"); });
  $("report-csv").addEventListener("click", (ev) => { ev.preventDefault(); downloadReport("csv"); });
  const saved = sessionStorage.getItem(KEY_STORE);
  if (saved) signIn(saved).catch(() => sessionStorage.removeItem(KEY_STORE));
});
