// The support console: plain JavaScript over the profile API (/v1). The credential stays in
// this tab (sessionStorage); every value is put into the page as text, never as HTML.
"use strict";

const MASK = "***";
const $ = (id) => document.getElementById(id);
let me = null;
let current = null;
let revealing = null;

function say(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

async function call(method, path, body) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem("credential") };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(answer.detail || response.statusText);
    error.status = response.status;
    throw error;
  }
  return answer;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function show(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

async function signIn(credential) {
  sessionStorage.setItem("credential", credential);
  try {
    me = await call("GET", "/v1/me");
  } catch (e) {
    sessionStorage.removeItem("credential");
    say("Sign-in refused: " + e.message);
    return;
  }
  say("");
  $("who-name").textContent = me.principal + " (" + me.role + ")";
  $("who").hidden = false;
  $("sign-in").hidden = true;
  $("find").hidden = false;
}

function signOut() {
  sessionStorage.removeItem("credential");
  location.reload();
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

async function find(query, reason) {
  say("");
  $("profile").hidden = true;
  let user = query.trim();
  try {
    if (!UUID.test(user)) {
      if (!reason.trim()) {
        say("A search by email needs a reason: it is written to the user's audit trail.");
        return;
      }
      user = (await call("POST", "/v1/profiles/lookup", { email: user, reason })).user_id;
    }
    await open(user);
  } catch (e) {
    say(e.message);
  }
}

async function open(user) {
  const profile = await call("GET", "/v1/profiles/" + user);
  current = profile;
  $("profile-id").textContent = user;
  $("profile-state").textContent = "State: " + profile.state + ", version " + profile.version;
  const rows = $("fields").tBodies[0];
  rows.replaceChildren();
  const fields = Object.entries(profile.profile || {});
  if (profile.region !== undefined) fields.push(["region", profile.region]);
  if (profile.segments !== undefined) fields.push(["segments", profile.segments]);
  for (const [name, value] of fields) {
    const row = rows.insertRow();
    row.dataset.field = name;
    cell(row, name);
    cell(row, show(value), value === MASK ? "masked" : "");
    const action = row.insertCell();
    if (value === MASK && me.actions.includes("reveal") && me.reveal.includes(name)) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Reveal";
      button.className = "reveal";
      button.addEventListener("click", () => askReason(name));
      action.appendChild(button);
    }
  }
  await Promise.all([consent(user), audit(user)]);
  $("profile").hidden = false;
}

async function consent(user) {
  const rows = $("consent").tBodies[0];
  rows.replaceChildren();
  const answer = await call("GET", "/v1/profiles/" + user + "/consent");
  if (answer.history.length === 0) {
    const row = rows.insertRow();
    cell(row, "No consent records.").colSpan = 5;
  }
  for (const record of answer.history) {
    const row = rows.insertRow();
    cell(row, record.purpose);
    cell(row, record.granted ? "yes" : "no");
    cell(row, record.policy_version);
    cell(row, record.source);
    cell(row, record.occurred_at);
  }
}

async function audit(user) {
  const section = $("audit-section");
  section.hidden = !me.actions.includes("audit");
  if (section.hidden) return;
  const rows = $("audit").tBodies[0];
  rows.replaceChildren();
  const answer = await call("GET", "/v1/profiles/" + user + "/audit");
  for (const record of answer.audit) {
    const row = rows.insertRow();
    cell(row, record.at);
    cell(row, record.actor);
    cell(row, record.action);
    cell(row, record.fields.join(", "));
    cell(row, record.reason);
  }
}

function askReason(field) {
  revealing = field;
  $("reveal-field").textContent = field;
  $("reveal-reason").value = "";
  $("reveal-form").hidden = false;
  $("reveal-reason").focus();
}

async function reveal(reason) {
  const field = revealing;
  try {
    const answer = await call("POST", "/v1/profiles/" + current.user_id + "/reveal", {
      fields: [field],
      reason,
    });
    const row = $("fields").querySelector('tr[data-field="' + CSS.escape(field) + '"]');
    const value = row.cells[1];
    value.textContent = show(answer.fields[field]);
    value.className = "revealed";
    row.cells[2].replaceChildren();
    $("reveal-form").hidden = true;
    await audit(current.user_id);
  } catch (e) {
    say(e.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("credential").value);
  });
  $("sign-out").addEventListener("click", signOut);
  $("find-form").addEventListener("submit", (e) => {
    e.preventDefault();
    find($("query").value, $("find-reason").value);
  });
  $("reveal-form").addEventListener("submit", (e) => {
    e.preventDefault();
    reveal($("reveal-reason").value);
  });
  $("reveal-cancel").addEventListener("click", () => {
    $("reveal-form").hidden = true;
  });
  if (sessionStorage.getItem("credential")) signIn(sessionStorage.getItem("credential"));
});
