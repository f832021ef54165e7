// ASVAT problem-solving plans (SARA): the list, what needs attention, one plan's scanning,
// analysis, responses and assessment, and the supervision and closing actions. Plain JS,
// the same token as the live dashboard (kept in this tab only).
"use strict";

const ROLES = ["viewer", "operator", "supervisor", "admin"];
const state = { token: sessionStorage.getItem("asvat-token") || "", me: null, plan: null };
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
const words = (s) => String(s || "").replace(/_/g, " ");

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json",
      ...(options.headers || {}) },
  });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (response.status === 401) { showSignIn("Your token was refused: sign in again."); }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new Error(Array.isArray(detail) ? detail.map((d) => d.msg).join("; ") : String(detail));
  }
  return body;
}

function showSignIn(message = "") {
  $("board").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message;
}

async function signIn(token) {
  state.token = token.trim();
  try { state.me = await api("/v1/me"); } catch (e) { showSignIn("That token is unknown or revoked."); return; }
  sessionStorage.setItem("asvat-token", state.token);
  $("who").textContent = `${state.me.name} (${state.me.role})`;
  $("signin").hidden = true;
  $("board").hidden = false;
  await Promise.all([loadReport(), loadList()]);
  const wanted = new URLSearchParams(location.search).get("plan");
  if (wanted) await openPlan(wanted);
}

const can = (role) => state.me && ROLES.indexOf(state.me.role) >= ROLES.indexOf(role);

async function loadReport() {
  const report = await api("/v1/plans/report");
  const list = $("report");
  list.replaceChildren();
  for (const [reason, n] of Object.entries(report.counts)) {
    const item = el("li", {}, `${words(reason)}: ${n}`);
    for (const p of report[reason].slice(0, 5)) {
      item.append(" ", el("button", { type: "button", onclick: () => openPlan(p.plan_id) },
        `${p.subject_type} in ${p.district}`));
    }
    list.append(item);
  }
}

async function loadList() {
  const status = $("status").value;
  const page = await api(`/v1/plans?limit=200${status ? `&status=${status}` : ""}`);
  const list = $("plans");
  list.replaceChildren();
  for (const p of page.items) {
    list.append(el("li", { class: "plan-item" },
      el("button", { type: "button", onclick: () => openPlan(p.plan_id) },
        `${p.subject_type === "location" ? "Place" : "Victim"} ${p.subject_key.slice(0, 24)}`,
        el("span", { class: "status" }, words(p.status)))));
  }
  if (!page.items.length) list.append(el("li", {}, "No plans."));
}

function responseRow(r = {}) {
  return el("div", { class: "response-row" },
    el("input", { "aria-label": "Action", placeholder: "Action", value: r.action || "", name: "action" }),
    el("input", { "aria-label": "Owner", placeholder: "Owner", value: r.owner || "", name: "owner" }),
    el("input", { "aria-label": "Due date", type: "date", value: r.due_date || "", name: "due_date" }));
}

async function openPlan(id) {
  const detail = await api(`/v1/plans/${id}`);
  const p = detail.plan;
  state.plan = p;
  $("plan").hidden = false;
  $("plan-error").textContent = "";
  $("plan-title").textContent =
    `Plan for ${p.subject_type === "location" ? "the place" : "the victim"} ${p.subject_key.slice(0, 24)}`;
  const missing = p.missing.length ? ` Missing before submission: ${p.missing.map(words).join(", ")}.` : "";
  $("plan-state").textContent = `Status: ${words(p.status)}.${missing}` +
    (p.status === "signed_off" && p.review_due_at ? ` Next review by ${p.review_due_at.slice(0, 10)}.` : "");
  const scan = p.scanning || {};
  $("scan-summary").textContent = scan.summary || "";
  $("scan-map").innerHTML = scan.map_svg || "";  // drawn by the API from grid points
  const rows = $("scan-incidents");
  rows.replaceChildren();
  for (const i of scan.incidents || []) {
    rows.append(el("tr", {}, el("td", {}, i.incident_id), el("td", {}, i.occurred_at),
      el("td", {}, words(i.classification)), el("td", {}, i.contributing ? "yes" : "")));
  }
  for (const name of ["problem_statement", "analysis", "success_measure"]) $(name).value = p[name] || "";
  $("evaluation_due").value = p.evaluation_due || "";
  $("responses").replaceChildren(...(p.responses.length ? p.responses : [{}]).map(responseRow));
  const open = p.status !== "closed";
  $("plan-form").querySelectorAll("textarea, input, button").forEach((n) => { n.disabled = !open || !can("operator"); });
  $("sign-off").hidden = !can("supervisor");
  $("close-form").hidden = !(can("supervisor") && p.status === "signed_off");
  $("before-after").textContent = p.before_after
    ? `Outcome ${words(p.outcome)}: ${p.incidents_before} incidents in the ${p.before_after.period_days} days before it opened, ${p.incidents_after} while it was open.`
    : "";
  const audit = $("plan-audit");
  audit.replaceChildren(...detail.audit.map((a) =>
    el("li", { class: "audit-entry" }, `${a.at.slice(0, 19)} ${a.action} by ${a.actor}`)));
}

function formChanges() {
  const responses = [...$("responses").querySelectorAll(".response-row")].map((row) => {
    const value = (name) => row.querySelector(`[name=${name}]`).value.trim() || null;
    return { action: value("action"), owner: value("owner"), due_date: value("due_date") };
  }).filter((r) => r.action || r.owner || r.due_date);
  const text = (name) => $(name).value.trim() || null;
  return { problem_statement: text("problem_statement"), analysis: text("analysis"),
    success_measure: text("success_measure"), evaluation_due: $("evaluation_due").value || null,
    responses };
}

async function act(path, body) {
  $("plan-error").textContent = "";
  let refused = "";
  try {
    await api(path, { method: "POST", body: body ? JSON.stringify(body) : undefined });
  } catch (e) {
    refused = e.message;
  }
  // Reload first, then say why it was refused: the reload redraws the form, and an error
  // shown before it would invite typing that the redraw then wiped.
  await Promise.all([openPlan(state.plan.plan_id), loadList(), loadReport()]);
  $("plan-error").textContent = refused;
}

async function save() {
  $("plan-error").textContent = "";
  try {
    await api(`/v1/plans/${state.plan.plan_id}`, { method: "PATCH", body: JSON.stringify(formChanges()) });
  } catch (e) { $("plan-error").textContent = e.message; return false; }
  return true;
}

$("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("token").value); });
$("status").addEventListener("change", loadList);
$("add-response").addEventListener("click", () => $("responses").append(responseRow()));
$("plan-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (await save()) await openPlan(state.plan.plan_id);
});
$("submit-plan").addEventListener("click", async () => {
  if (await save()) await act(`/v1/plans/${state.plan.plan_id}/submit`);
});
$("sign-off").addEventListener("click", () => act(`/v1/plans/${state.plan.plan_id}/sign-off`, {}));
$("close-form").addEventListener("submit", (e) => {
  e.preventDefault();
  act(`/v1/plans/${state.plan.plan_id}/close`,
    { outcome: $("outcome").value || null, evaluation: $("evaluation").value.trim() || null });
});

if (state.token) signIn(state.token); else showSignIn();
