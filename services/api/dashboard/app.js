// ASVAT dashboard: live escalations, their reasons and history, and a map of the force
// area drawn from the API's own boundary files. No framework, nothing from the internet.
"use strict";

const ROLES = ["viewer", "operator", "supervisor", "admin"];
const LEVELS = ["high", "medium", "standard"];
const state = {
  token: sessionStorage.getItem("asvat-token") || "",
  me: null,
  alerts: new Map(),          // escalation_id -> summary
  fresh: new Set(),           // ids to flash once
  open: new Set(),            // ids whose details are shown
  lastEventId: 0,
  names: new Map(),           // "district:CODE" / "ward:CODE" -> name
  project: null,              // [lon, lat] -> [x, y]
  stream: null,               // AbortController of the live stream
};

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
};
const svg = (tag, attrs = {}) => {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
};

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${state.token}`, ...(options.headers || {}) },
  });
  if (response.status === 401) { signOut("Your token was refused: sign in again."); throw new Error("401"); }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (_) { /* not JSON */ }
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return response;
}

// -- sign in ------------------------------------------------------------------------------

async function signIn(token) {
  state.token = token.trim();
  const response = await fetch("/v1/me", { headers: { Authorization: `Bearer ${state.token}` } });
  if (!response.ok) {
    $("signin-error").textContent = response.status === 401
      ? "That token is unknown or revoked." : `The API answered ${response.status}.`;
    state.token = "";
    return;
  }
  state.me = await response.json();
  sessionStorage.setItem("asvat-token", state.token);
  $("who").textContent = `${state.me.name} (${state.me.role})`;
  $("signin").hidden = true;
  $("board").hidden = false;
  await start();
}

function signOut(message = "") {
  if (state.stream) state.stream.abort();
  sessionStorage.removeItem("asvat-token");
  state.token = "";
  $("board").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message;
  setConnection(false);
  $("token").focus();
}

const canAct = (role) => state.me && ROLES.indexOf(state.me.role) >= ROLES.indexOf(role);

// -- map ----------------------------------------------------------------------------------

function rings(geometry) {
  if (geometry.type === "Polygon") return geometry.coordinates;
  if (geometry.type === "MultiPolygon") return geometry.coordinates.flat();
  return [];
}

function makeProjection(features) {
  let [minX, minY, maxX, maxY] = [180, 90, -180, -90];
  for (const f of features) for (const ring of rings(f.geometry)) for (const [x, y] of ring) {
    minX = Math.min(minX, x); maxX = Math.max(maxX, x); minY = Math.min(minY, y); maxY = Math.max(maxY, y);
  }
  const k = Math.cos(((minY + maxY) / 2) * Math.PI / 180);   // equirectangular, true at mid-latitude
  const scale = 960 / Math.max((maxX - minX) * k, maxY - minY);
  const offX = (1000 - (maxX - minX) * k * scale) / 2, offY = (1000 - (maxY - minY) * scale) / 2;
  return ([lon, lat]) => [offX + (lon - minX) * k * scale, offY + (maxY - lat) * scale];
}

function pathOf(geometry) {
  return rings(geometry).map((ring) => "M" + ring.map((p) => state.project(p).map((v) => v.toFixed(1)).join(",")).join("L") + "Z").join("");
}

async function drawMap() {
  const [districts, wards] = await Promise.all([
    api("/v1/areas/district/boundaries").then((r) => r.json()),
    api("/v1/areas/ward/boundaries").then((r) => r.json()),
  ]);
  state.project = makeProjection(districts.features);
  $("wards").replaceChildren(...wards.features.map((f) => svg("path", { d: pathOf(f.geometry) })));
  $("districts").replaceChildren(...districts.features.map((f) => {
    const path = svg("path", { d: pathOf(f.geometry), "data-code": f.properties.code });
    path.append(Object.assign(svg("title"), { textContent: f.properties.name }));
    return path;
  }));
  const select = $("district");
  for (const f of districts.features) {
    state.names.set(`district:${f.properties.code}`, f.properties.name);
    select.append(el("option", { value: f.properties.code }, f.properties.name));
  }
  for (const f of wards.features) state.names.set(`ward:${f.properties.code}`, f.properties.name);
}

function drawPoints() {
  if (!state.project) return;
  const dots = [];
  for (const a of visible()) {
    if (a.lat == null || a.lon == null) continue;
    const [x, y] = state.project([a.lon, a.lat]);
    const dot = svg("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 11, class: a.level || "none" });
    dot.append(Object.assign(svg("title"), { textContent: describe(a) }));
    dots.push(dot);
  }
  $("points").replaceChildren(...dots);
  for (const path of $("districts").children) {
    path.classList.toggle("selected", path.dataset.code === $("district").value);
  }
}

async function drawHotspots() {
  if (!state.project) return;
  const district = $("district").value;
  const query = new URLSearchParams({ min_incidents: "3", limit: "100" });
  if (district) query.set("district", district);
  try {
    const doc = await (await api(`/v1/hotspots?${query}`)).json();
    const most = Math.max(1, ...doc.features.map((f) => f.properties.incidents));
    $("hotspots").replaceChildren(...doc.features.map((f) => {
      const [x, y] = state.project(f.geometry.coordinates);
      const ring = svg("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: (6 + 22 * Math.sqrt(f.properties.incidents / most)).toFixed(1) });
      ring.append(Object.assign(svg("title"), { textContent: `${f.properties.incidents} incidents (last 28 days)` }));
      return ring;
    }));
  } catch (error) { console.warn("hotspots:", error.message); }
}

// -- alerts -------------------------------------------------------------------------------

function levelsShown() {
  return new Set([...document.querySelectorAll("input[name=level]:checked")].map((i) => i.value));
}

function visible() {
  const district = $("district").value;
  const levels = levelsShown();
  return [...state.alerts.values()]
    .filter((a) => (!district || a.district === district) && levels.has(a.level || "none"))
    .sort((a, b) => (a.raised_at < b.raised_at ? 1 : a.raised_at > b.raised_at ? -1 : a.escalation_id < b.escalation_id ? 1 : -1));
}

const areaName = (a) => a.district === "unassigned" ? "area not known"
  : `${state.names.get(`ward:${a.ward}`) || a.ward}, ${state.names.get(`district:${a.district}`) || a.district}`;

function describe(a) {
  const who = a.subject_type === "victim" ? `Repeat victim ${a.subject_key.slice(0, 10)}…` : `Repeat location ${a.subject_key}`;
  return `${who} — ${a.rule_id || "risk " + (a.level || "not rated")}`;
}

const time = (iso) => iso ? new Date(iso).toLocaleString("en-GB", { dateStyle: "short", timeStyle: "short" }) : "";

function render() {
  const list = $("alerts");
  const shown = visible();
  $("count").textContent = `(${shown.length})`;
  list.replaceChildren(...shown.map(item));
  state.fresh.clear();
  drawPoints();
}

function item(a) {
  const level = a.level || "none";
  const expanded = state.open.has(a.escalation_id);
  const li = el("li", { class: `alert level-${level}${state.fresh.has(a.escalation_id) ? " fresh" : ""}`, "data-id": a.escalation_id });
  const head = el("button", { class: "head", type: "button", "aria-expanded": String(expanded), "aria-controls": `d-${a.escalation_id}`, onclick: () => toggle(a.escalation_id) },
    el("span", { class: "badge" }, level === "none" ? "unrated" : level),
    el("span", { class: "what" }, describe(a)),
    el("span", { class: `status ${a.status}` }, a.status),
    el("span", { class: "when" }, `raised ${time(a.raised_at)}`),
    el("span", { class: "where" }, areaName(a)),
    el("span", { class: "when" }, `incident ${a.incident_id}`));
  li.append(head);
  const details = el("div", { class: "details", id: `d-${a.escalation_id}` });
  details.hidden = !expanded;
  if (expanded) fillDetails(details, a);
  li.append(details);
  return li;
}

async function toggle(id) {
  if (state.open.has(id)) state.open.delete(id); else state.open.add(id);
  render();
  const button = document.querySelector(`li[data-id="${id}"] .head`);
  if (button) button.focus();
}

async function fillDetails(box, a) {
  box.append(el("h3", {}, "Why"));
  const reasons = a.reasons.length ? a.reasons : [{ detail: "no reasons given" }];
  const reason = (r) => (r.detail || `${r.factor} ${r.value ?? ""}`) + (r.rule_id ? ` [${r.rule_id}]` : "") + (r.weight != null ? ` (+${r.weight})` : "");
  box.append(el("ul", { class: "reasons" }, ...reasons.map((r) => el("li", {}, reason(r)))));
  if (a.contributing_incident_ids.length) {
    box.append(el("p", {}, `Incidents: ${a.contributing_incident_ids.join(", ")}`));
  }
  if (a.actions.length) {
    box.append(el("h3", {}, "Actions"), el("ul", {}, ...a.actions.map((t) => el("li", {}, `${t.description}${t.due_at ? " by " + time(t.due_at) : ""}`))));
  }
  if (a.assignee) box.append(el("p", {}, `Assigned to ${a.assignee_type} ${a.assignee}`));
  const actions = el("div", { class: "actions" });
  if (a.status === "open" && canAct("operator")) {
    actions.append(el("button", { class: "ack", type: "button", onclick: () => acknowledge(a.escalation_id) }, "Acknowledge"));
  }
  box.append(actions);
  const history = el("ol", { class: "audit", "aria-label": "Audit trail" });
  box.append(el("h3", {}, "History"), history);
  try {
    const detail = await (await api(`/v1/escalations/${a.escalation_id}`)).json();
    history.replaceChildren(...detail.audit.map((e) => el("li", { class: "audit-entry" }, `${time(e.at)} ${e.actor}: ${e.action}`)));
    if (!detail.audit.length) history.append(el("li", {}, "no action yet"));
  } catch (error) { history.append(el("li", {}, `history unavailable: ${error.message}`)); }
}

async function acknowledge(id) {
  try {
    const done = await (await api(`/v1/escalations/${id}/acknowledge`, { method: "POST" })).json();
    upsert(done.escalation, false);
    render();
    const button = document.querySelector(`li[data-id="${id}"] .head`);
    if (button) button.focus();
  } catch (error) { alert(`Could not acknowledge: ${error.message}`); }
}

function upsert(summary, fresh) {
  const known = state.alerts.get(summary.escalation_id);
  if (known && known.event_id > summary.event_id) return;   // an older snapshot
  state.alerts.set(summary.escalation_id, summary);
  if (fresh && !known) state.fresh.add(summary.escalation_id);
}

async function loadList() {
  const query = new URLSearchParams({ limit: "200" });
  if ($("district").value) query.set("district", $("district").value);
  const page = await (await api(`/v1/escalations?${query}`)).json();
  state.alerts.clear();
  for (const a of page.items) upsert(a, false);
  state.lastEventId = page.feed_position;
  render();
}

function setConnection(live) {
  const box = $("connection");
  box.textContent = live ? "live" : "reconnecting…";
  box.className = `connection ${live ? "live" : "off"}`;
}

// Server-Sent Events read with fetch (EventSource cannot send the token), reconnecting
// with the last event id so that nothing is missed or repeated.
async function stream() {
  while (state.token) {
    const controller = new AbortController();
    state.stream = controller;
    const query = new URLSearchParams({ last_event_id: String(state.lastEventId) });
    if ($("district").value) query.set("district", $("district").value);
    try {
      const response = await api(`/v1/alerts/stream?${query}`, { signal: controller.signal });
      setConnection(true);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (!data) continue;
          const message = JSON.parse(data);
          state.lastEventId = Math.max(state.lastEventId, message.event_id);
          upsert(message.escalation, message.kind === "raised");
          render();
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    setConnection(false);
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

async function restart() {
  if (state.stream) state.stream.abort();
  state.stream = null;
  await loadList();
  drawHotspots();
  stream();
}

async function start() {
  await drawMap();
  await restart();
  setInterval(drawHotspots, 60000);
}

// -- wiring -------------------------------------------------------------------------------

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("token").value);
});
$("signout").addEventListener("click", () => signOut());
$("district").addEventListener("change", restart);
for (const box of document.querySelectorAll("input[name=level]")) box.addEventListener("change", render);
if (state.token) signIn(state.token); else $("token").focus();
