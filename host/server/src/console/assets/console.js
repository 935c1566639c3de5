// runbox console: live updates and passkey ceremonies. The pages work
// without it (read-only); every string from the server is set as text.
"use strict";

function csrf() {
  const m = document.querySelector('meta[name="csrf"]');
  return m ? m.content : "";
}

function say(message, failed) {
  const s = document.getElementById("status");
  if (!s) return;
  s.textContent = message;
  s.className = failed ? "failed" : "";
}

async function post(url, body) {
  const r = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify(body),
  });
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) {
    const why = answer.error ? answer.error.message : r.status + " " + r.statusText;
    throw new Error(why);
  }
  return answer;
}

// Fetches the page again and swaps in its main part: the server renders
// (and escapes) everything a human reads. An incident page asks for its
// timeline only after the last event it shows (the timeline only grows),
// and takes the fresh part in with `swap`; when that part does not follow
// what the page shows, the page is fetched whole. A change announced while
// a fetch is under way may have missed that fetch's rendering: one more
// follows.
let refreshing = false;
let again = false;
async function refresh() {
  if (refreshing) {
    again = true;
    return;
  }
  refreshing = true;
  let whole = false;
  try {
    do {
      again = false;
      const list = document.getElementById("timeline");
      const url = new URL(location.href);
      if (list && list.dataset.last && !whole) url.searchParams.set("after", list.dataset.last);
      const r = await fetch(url, { credentials: "same-origin" });
      if (!r.ok) continue;
      whole = !take(await r.text());
      again = again || whole;
    } while (again);
  } finally {
    refreshing = false;
  }
}

// Takes in a rendering (a page, or a part the server pushed); false when
// it is a part of the timeline that starts after the page's last event.
function take(html) {
  const doc = new DOMParser().parseFromString(html, "text/html");
  const live = document.getElementById("live");
  const fresh = doc.getElementById("live");
  if (!fresh || !live) return true;
  const part = doc.getElementById("timeline");
  if (!part || part.dataset.after === undefined) {
    live.replaceChildren(...fresh.childNodes);
  } else if (!append(part, doc.getElementById("head"))) {
    return false;
  }
  document.body.dataset.refreshedAt = String(Date.now());
  return true;
}

// Appends the events of `part` the page lacks and keeps the newer of the
// two heads; false when `part` starts after the page's last event.
function append(part, freshHead) {
  const list = document.getElementById("timeline");
  const head = document.getElementById("head");
  if (!list || !head || !freshHead) return false;
  const last = Number(list.dataset.last);
  if (Number(part.dataset.after) > last) return false;
  const lacking = [...part.children].filter((li) => Number(li.dataset.seq) > last);
  if (lacking.length) {
    list.append(...lacking);
    list.dataset.last = part.dataset.last;
  }
  if (Number(freshHead.dataset.version) > Number(head.dataset.version)) {
    head.replaceChildren(...freshHead.childNodes);
    head.dataset.version = freshHead.dataset.version;
  }
  return true;
}

// A part the server pushed: taken in at once unless a fetch is under way
// (its rendering may come later and be newer; one more fetch follows it).
function pushed(html) {
  if (refreshing) again = true;
  else if (!take(html)) refresh();
}

// Changes arrive through one worker shared by every console tab of this
// browser (live.js), or a stream of this tab's own where there is none.
// Once the stream listens, the tab looks again: a commit between the
// page's rendering and the stream's start is announced to nobody.
function listen() {
  const live = document.getElementById("live");
  const worker = document.querySelector('meta[name="live-worker"]');
  if (!live || !csrf()) return;
  const shown = live.dataset.live;
  const told = (m) => (m && m.part ? pushed(m.part) : refresh());
  if (window.SharedWorker && worker) {
    // The worker tells this tab only of changes to what it shows.
    const shared = new SharedWorker(worker.content, { name: "runbox-live" });
    shared.port.onmessage = (m) => told(m.data);
    shared.port.postMessage({ show: shown });
    window.addEventListener("pagehide", () => shared.port.postMessage("bye"));
    window.addEventListener("pageshow", (e) => {
      if (e.persisted) shared.port.postMessage({ show: shown });
    });
  } else if (window.EventSource) {
    const events = new EventSource("/ui/events");
    events.addEventListener("open", () => refresh());
    events.addEventListener("changed", (e) => {
      const m = concerning(JSON.parse(e.data), shown);
      if (m) told(m);
    });
  }
}

function assertionOptions(options) {
  return { publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options.publicKey) };
}

// Shows what is about to be signed, and signs it on "Sign".
function confirmSigning(summary) {
  return new Promise((resolve) => {
    const dialog = document.createElement("dialog");
    dialog.setAttribute("aria-labelledby", "sign-h");
    const h = document.createElement("h2");
    h.id = "sign-h";
    h.textContent = "You are signing";
    const dl = document.createElement("dl");
    for (const [k, v] of summary) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      dl.append(dt, dd);
    }
    const sign = document.createElement("button");
    sign.textContent = "Sign with my passkey";
    sign.id = "sign";
    const cancel = document.createElement("button");
    cancel.textContent = "Cancel";
    sign.onclick = () => { dialog.close(); dialog.remove(); resolve(true); };
    cancel.onclick = () => { dialog.close(); dialog.remove(); resolve(false); };
    dialog.append(h, dl, sign, cancel);
    document.body.append(dialog);
    dialog.showModal();
  });
}

async function decide(button) {
  const live = document.getElementById("live");
  const ask = {
    action: button.dataset.action,
    incident: live.dataset.live === "all" ? null : live.dataset.live,
    step: button.dataset.step || null,
    outcome: button.dataset.outcome || null,
    scope: button.dataset.scope || null,
  };
  try {
    const offer = await post("/ui/decisions/options", ask);
    if (!(await confirmSigning(offer.summary))) return say("Not signed.");
    const cred = await navigator.credentials.get(assertionOptions(offer.options));
    const done = await post("/ui/decisions", {
      statement: offer.statement,
      assertion: JSON.stringify(cred.toJSON()),
    });
    say(done.done);
    await refresh();
  } catch (e) {
    say(e.message, true);
  }
}

async function login() {
  try {
    const offer = await post("/ui/login/options", {});
    const cred = await navigator.credentials.get(assertionOptions(offer.options));
    await post("/ui/login", { challenge: offer.challenge, assertion: JSON.stringify(cred.toJSON()) });
    location.assign("/ui");
  } catch (e) {
    say(e.message, true);
  }
}

async function enroll() {
  const token = location.hash.slice(1);
  try {
    const offer = await post("/ui/enroll/options", { token });
    const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(offer.options.publicKey);
    const cred = await navigator.credentials.create({ publicKey });
    const done = await post("/ui/enroll", { token, credential: JSON.stringify(cred.toJSON()) });
    history.replaceState(null, "", location.pathname);
    say("Enrolled " + done.human + "'s passkey \u201c" + done.label + "\u201d. " +
      (done.next || "Sign in at /ui/login."));
  } catch (e) {
    say(e.message, true);
  }
}

document.addEventListener("click", (e) => {
  const button = e.target.closest("button");
  if (!button) return;
  if (button.classList.contains("decide")) decide(button);
  else if (button.id === "login") login();
  else if (button.id === "enroll") enroll();
});

listen();
