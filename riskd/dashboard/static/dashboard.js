// riskd dashboard: the live feed over Server-Sent Events (the browser reconnects by itself and
// says where it was, Last-Event-ID), the figures refreshed every few seconds, ages kept current.
"use strict";

const feed = document.getElementById("feed");
const state = document.getElementById("stream-state");
const figures = document.getElementById("figures");

function ago(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function text(tag, cls, content) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  el.textContent = content;
  return el;
}

function link(account) {
  const a = document.createElement("a");
  a.href = `/accounts/${encodeURIComponent(account)}`;
  a.textContent = account;
  return a;
}

function item(m) {
  const li = document.createElement("li");
  li.dataset.at = m.created_at;
  li.className = `item new ${m.kind}` + (m.kind === "event" ? ` level-${m.to_level}` : "");
  li.append(text("time", "age", ago(m.created_at)));
  if (m.kind === "event") {
    li.append(link(m.account_id), text("span", `level level-${m.from_level}`, m.from_level), "→",
              text("span", `level level-${m.to_level}`, m.to_level),
              text("span", "num", m.utilization_text));
    if (m.close_request_id) li.append(text("span", "tag", `close request ${m.close_request_id}`));
  } else {
    li.append(text("span", "tag alert", `alert: ${m.alert}`));
    if (m.account_id) li.append(link(m.account_id));
    li.append(text("span", "", m.text));
  }
  return li;
}

function listen(cursor) {
  // from where the page was rendered; on a reconnect the browser says its last id itself
  const stream = new EventSource(`/events/stream?after=${encodeURIComponent(cursor)}`);
  let last = cursor;
  const add = (e) => {
    last = e.lastEventId || last;
    feed.prepend(item(JSON.parse(e.data)));
    while (feed.children.length > 200) feed.lastElementChild.remove();
  };
  stream.addEventListener("event", add);
  stream.addEventListener("alert", add);
  stream.addEventListener("hello", (e) => { last = e.lastEventId || last; });
  stream.onopen = () => { state.textContent = "live"; };
  stream.onerror = () => {
    state.textContent = "reconnecting…";
    // a proxy's error page ends an EventSource for good: start another from where it was
    if (stream.readyState === EventSource.CLOSED) setTimeout(() => listen(last), 2000);
  };
}

if (feed) listen(feed.dataset.cursor);

function stale(since) {
  let note = document.getElementById("stale");
  if (!note) {
    note = text("div", "stale", "");
    note.id = "stale";
    note.setAttribute("role", "alert");
    figures.prepend(note);
  }
  note.textContent = `Not refreshed since ${since}: the dashboard or its database does not ` +
    "answer. The figures below are old; riskd itself may be fine (riskd status).";
}

let failingSince = null;
let refreshing = false;

async function refresh() {
  if (refreshing) return;  // one at a time: a slow answer is not piled on
  refreshing = true;
  try {
    const response = await fetch("/?partial=1", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    figures.innerHTML = await response.text();
    failingSince = null;
    follow();
  } catch (e) {
    failingSince = failingSince || new Date().toLocaleTimeString();
    stale(failingSince);  // the next refresh tries again
  } finally {
    refreshing = false;
  }
}

function follow() {
  // the kill switch's form says what it would do now (it sits outside the refreshed part,
  // so that what is being typed in it stays)
  const form = document.getElementById("switch");
  const health = document.getElementById("health");
  if (!form || !health) return;
  const paused = health.dataset.paused === "yes";
  const button = form.querySelector("button");
  form.action = paused ? "/actions/resume" : "/actions/pause";
  button.className = paused ? "resume" : "pause";
  button.textContent = paused ? "Resume auto-close" : "Pause every auto-close";
}

if (figures) setInterval(refresh, 1000 * Number(figures.dataset.refresh || 5));
setInterval(() => {
  for (const li of document.querySelectorAll("ol#feed li[data-at]")) {
    li.querySelector("time.age").textContent = ago(li.dataset.at);
  }
}, 1000);
