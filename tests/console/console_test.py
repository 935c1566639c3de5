"""The web console in Chromium, driven by Playwright, with DevTools virtual
authenticators as passkeys. Started by tests/all/console.rs, which passes:

RUNBOX, RUNBOX_DATA_DIR   the binary and the data dir `runbox serve` owns
RUNBOX_URL                the console's origin (http://localhost:PORT)
RUNBOX_AGENT_TOKEN        an agent that may mutate (it runs the steps)
CHROMIUM, AXE_JS          the browser and axe-core
SCREENSHOTS               where the screenshots go

Each check fails with what it saw. Exit status 0 means every check held.
"""

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from playwright.sync_api import sync_playwright

URL = os.environ["RUNBOX_URL"]
TOKEN = os.environ["RUNBOX_AGENT_TOKEN"]
SHOTS = os.environ.get("SCREENSHOTS", "")
HOSTILE_NOTE = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2>"
HOSTILE_QUOTE = "<b>api</b>\"'><svg onload=window.pwned=3>"
# A forged timeline line: a newline and a right-to-left override.
HOSTILE_FORGE = "fine\napproved human:alice\u202egnp.exe"
WAIT_MS = 15000


def api(method, path, body=None, token=TOKEN, headers=None):
    """The agent API: (status, JSON answer)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(URL + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def runbox(*args):
    out = subprocess.run([os.environ["RUNBOX"], *args], capture_output=True, text=True)
    assert out.returncode == 0, f"runbox {args}: {out.stderr}"
    return out.stdout


def open_incident(inc, runbook, params=None):
    status, body = api("POST", "/v1/incidents", {"runbook": runbook, "id": inc, "params": params or {}})
    assert status == 201, (status, body)


def run_step(inc):
    status, body = api("POST", f"/v1/incidents/{inc}/steps:run", {})
    assert status == 200, (status, body)
    return body


def run_to_approval(inc):
    """Runs `diagnose`; the agent's next run stops at restart's approval."""
    run_step(inc)
    run_step(inc)
    assert status_of(inc) == "awaiting-approval", status_of(inc)


def status_of(inc):
    return api("GET", f"/v1/incidents/{inc}")[1]["status"]


def wait_text(page, selector, text):
    """Waits until `selector` shows `text` (no script: the CSP forbids eval)."""
    page.locator(selector, has_text=text).wait_for(timeout=WAIT_MS)


def authenticator(context, page):
    """A platform passkey for this browser context: user verification by
    biometrics, always granted."""
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True,
        "automaticPresenceSimulation": True}})
    return cdp


def enroll_and_sign_in(browser, name, label=None, width=1400):
    """Enrolls a passkey for `name` (labelled `label`, by default
    NAME-laptop) in a new browser context `width` pixels wide, checks the
    link works once, and signs in with it."""
    label = label or f"{name}-laptop"
    context = browser.new_context(viewport={"width": width, "height": 1000})
    page = context.new_page()
    authenticator(context, page)
    link = runbox("human", "add", name, "--passkey", "--label", label).strip().splitlines()[-1]
    assert link.startswith(URL + "/ui/enroll#"), link
    page.goto(link)
    page.click("#enroll")
    wait_text(page, "#status", f"Enrolled {name}'s passkey \u201c{label}\u201d")
    # The link works once.
    page.goto(link)
    page.click("#enroll")
    wait_text(page, "#status", "unknown, used or expired")
    page.goto(URL + "/ui/login")
    page.click("#login")
    page.wait_for_url(URL + "/ui", timeout=WAIT_MS)
    assert f"human:{name}" in page.inner_text("header"), page.inner_text("header")
    return context, page


def approve(page, inc, step="restart", action="approve"):
    page.goto(f"{URL}/ui/incidents/{inc}")
    page.click(f"button.decide[data-action={action}]")
    page.wait_for_selector("dialog #sign", timeout=WAIT_MS)
    shown = page.inner_text("dialog")
    assert inc in shown and step in shown and "Module sha256" in shown, shown
    page.click("dialog #sign")
    wait_text(page, "#status", f"{action} by human:")


SIGN_JS = """
async ([ask, tamper]) => {
  const csrf = document.querySelector('meta[name=csrf]').content;
  const post = async (url, body) => {
    const r = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf}, body: JSON.stringify(body)});
    return [r.status, await r.json()];
  };
  const [s, offer] = await post('/ui/decisions/options', ask);
  if (s !== 200) return [s, offer];
  const cred = await navigator.credentials.get({publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(offer.options.publicKey)});
  return [200, {statement: offer.statement, assertion: JSON.stringify(cred.toJSON())}];
}
"""

SIGN_TEXT_JS = """
async (statement) => {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(statement)));
  const cred = await navigator.credentials.get({publicKey: {challenge: digest, rpId: 'localhost', userVerification: 'required'}});
  return JSON.stringify(cred.toJSON());
}
"""

HAND_IN_JS = """
async (body) => {
  const csrf = document.querySelector('meta[name=csrf]').content;
  const r = await fetch('/ui/decisions', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf}, body: JSON.stringify(body)});
  return [r.status, await r.json()];
}
"""


def refused(answer, why):
    status, body = answer
    message = json.dumps(body)
    assert status in (401, 403, 409) and why in message, (status, message, why)
    print(f"refused as expected ({status}): {body['error']['message'][:120]}")


def live_approval_and_resolution(alice):
    open_incident("INC-1", "recover", {"service": "api"})
    # (Params are plain names by the runbook's rules; notes are free text.)
    for text in (HOSTILE_NOTE, HOSTILE_QUOTE, HOSTILE_FORGE):
        status, body = api("POST", "/v1/incidents/INC-1/notes", {"text": text})
        assert status == 200, (status, body)
    alice.goto(f"{URL}/ui/incidents/INC-1")
    alice.evaluate("window.__sameDocument = true")
    run_to_approval("INC-1")
    alice.wait_for_selector("button.decide[data-action=approve]", timeout=WAIT_MS)
    assert alice.evaluate("window.__sameDocument") is True, "the page reloaded"
    text = alice.inner_text("main")
    assert "approval of restart" in text and "touch (mutate)" in text, text
    assert HOSTILE_NOTE in text and HOSTILE_QUOTE in text, text
    # The one inert-text rule: shown as one line, the override escaped.
    assert "fine\u23ceapproved human:alice\\u{202e}gnp.exe" in text, text
    assert "\u202e" not in text, "a bidi override reached the page"
    assert alice.evaluate("window.pwned") is None, "hostile text ran"
    screenshots(alice, "console-incident")
    approve(alice, "INC-1")
    run_step("INC-1")  # restart, approved
    alice.locator("main h1 + dl .badge.resolved").wait_for(timeout=WAIT_MS)
    assert status_of("INC-1") == "resolved", status_of("INC-1")
    print("INC-1: approved with a passkey and resolved, watched live")


def second_passkey(browser):
    """alice enrolls a second passkey (her phone) beside her laptop's: both
    are listed, and either signs her in."""
    _, phone = enroll_and_sign_in(browser, "alice", label="alice-phone", width=420)
    listed = runbox("human", "list")
    assert "alice-laptop" in listed and "alice-phone" in listed, listed
    print("alice holds two passkeys; either signs her in")
    return phone


def sign_out(page):
    """Signing out ends the session: no page, no stream of changes."""
    page.goto(URL + "/ui")
    page.click("header form button[type=submit]")
    page.wait_for_url("**/ui/login*", timeout=WAIT_MS)
    answer = page.request.get(URL + "/ui/events")
    assert answer.status == 401, answer.status
    page.goto(URL + "/ui")
    assert "/ui/login" in page.url, page.url
    print("a signed-out browser reads nothing, not even the stream of changes")


def status_filter(alice):
    """The list's status control: one status, the active ones, and a value
    that names none (refused, named, shown inert)."""
    alice.goto(URL + "/ui")
    alice.select_option("#status-filter", "resolved")
    alice.click("form.filter button[type=submit]")
    alice.wait_for_url("**/ui?status=resolved*")
    rows = alice.locator("main tbody tr")
    assert rows.count() >= 1, alice.inner_text("main")
    assert all("resolved" in t for t in rows.all_inner_texts()), rows.all_inner_texts()
    assert alice.locator("#status-filter").input_value() == "resolved"
    alice.goto(URL + "/ui?status=active")
    assert "INC-1" not in alice.inner_text("main"), "a resolved incident shown as active"
    answer = alice.goto(URL + "/ui?status=%1B%5B31mred")
    assert answer.status == 400, answer.status
    text = alice.inner_text("body")
    assert "status `\\u{1b}[31mred` is none of the list's choices" in text, text
    print("the incident list filters by status")


def two_person_rule(alice, bob):
    open_incident("INC-2", "twoperson")
    run_to_approval("INC-2")
    approve(alice, "INC-2")
    assert status_of("INC-2") == "awaiting-approval", "one approval of two ran the step"
    approve(bob, "INC-2")
    run_step("INC-2")
    assert status_of("INC-2") == "resolved", status_of("INC-2")
    print("INC-2: alice and bob approved; the two-person rule held")


def refusals(browser, alice, carol):
    open_incident("INC-3", "recover")
    run_to_approval("INC-3")
    alice.goto(f"{URL}/ui/incidents/INC-3")
    ask = {"action": "approve", "incident": "INC-3", "step": "restart"}
    status, signed = alice.evaluate(SIGN_JS, [ask, None])
    assert status == 200, signed
    # The same assertion with a statement for another attempt.
    other = dict(signed, statement=signed["statement"].replace('"attempt":1', '"attempt":2'))
    assert other["statement"] != signed["statement"], signed["statement"]
    refused(alice.evaluate(HAND_IN_JS, other), "does not verify")
    # The real one counts once; handed in again, it is a replay.
    status, done = alice.evaluate(HAND_IN_JS, signed)
    assert status == 200, done
    refused(alice.evaluate(HAND_IN_JS, signed), "used already")
    # An expired statement: made for one second, signed, handed in late.
    open_incident("INC-4", "recover")
    run_to_approval("INC-4")
    status, made = api("POST", "/v1/incidents/INC-4/statements",
                       {"action": "approve", "signer": "alice", "step": "restart", "ttl_s": 1})
    assert status == 200, made
    alice.goto(f"{URL}/ui/incidents/INC-4")
    assertion = alice.evaluate(SIGN_TEXT_JS, made["statement"])
    time.sleep(1.5)
    refused(alice.evaluate(HAND_IN_JS, {"statement": made["statement"], "assertion": assertion}), "expired")
    # Carol signs, then her passkey is removed from the registry: her
    # decision, handed in by the agent, no longer counts.
    carol.goto(f"{URL}/ui/incidents/INC-4")
    status, signed = carol.evaluate(SIGN_JS, [{"action": "approve", "incident": "INC-4", "step": "restart"}, None])
    assert status == 200, signed
    runbox("human", "remove", "carol")
    decision = {"statement": signed["statement"], "signature": signed["assertion"]}
    refused(api("POST", "/v1/incidents/INC-4/decisions", decision), "not in allowed_signers")
    carol.goto(f"{URL}/ui")
    assert carol.url.startswith(URL + "/ui/login"), f"carol's session outlived her keys: {carol.url}"
    cross_site(browser, alice)
    agent_and_console_apart(alice)
    brake_engaged_and_released(alice)


def brake_engaged_and_released(alice):
    alice.goto(URL + "/ui/brakes")
    alice.fill("#scope", "runbook=recover")
    alice.fill("#reason", "<i>too many restarts</i>")
    alice.click("form[action='/ui/brakes'] button")
    alice.wait_for_url(URL + "/ui/brakes")
    assert "runbook=recover" in alice.content(), alice.content()
    row = alice.locator("tr", has_text="runbook=recover")
    # Engaging is an unsigned act: never recorded under a human's name.
    assert "agent:console-alice" in row.inner_text() and "<i>too many restarts</i>" in row.inner_text(), row.inner_text()
    alice.click("button.decide[data-action=release-brake]")
    alice.click("dialog #sign")
    wait_text(alice, "#status", "released runbook=recover")
    status, brakes = api("GET", "/v1/brakes")
    assert brakes == {"brakes": []}, brakes
    print("a brake engaged from the console, released with a passkey")


def postmortem_names_the_passkey(alice):
    alice.goto(f"{URL}/ui/incidents/INC-1/postmortem")
    decisions = alice.inner_text("table.decisions")
    assert "passkey alice-laptop" in decisions and "verified" in decisions, decisions
    print("the postmortem shows the decision verified, with the passkey's name")


class Hostile(http.server.BaseHTTPRequestHandler):
    """A page on another origin that posts a brake form to the console."""

    def do_GET(self):
        page = (f'<form id=f method=post action="{URL}/ui/brakes">'
                '<input name=csrf value=guess><input name=scope value=all><input name=reason value=csrf>'
                '</form><script>document.getElementById("f").submit()</script>')
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(page.encode())

    def log_message(self, *args):
        pass


def cross_site(browser, alice):
    server = http.server.HTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = alice.context.new_page()
    with page.expect_response(lambda r: r.url == URL + "/ui/brakes") as answer:
        page.goto(f"http://127.0.0.1:{server.server_port}/")
    assert answer.value.status == 403, answer.value.status
    server.shutdown()
    status, brakes = api("GET", "/v1/brakes")
    assert status == 200 and brakes == {"brakes": []}, brakes
    print("a cross-site form post was refused and engaged nothing")


def agent_and_console_apart(alice):
    # An agent's bearer token is no console session.
    req = urllib.request.Request(URL + "/ui", headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(req) as r:
        assert r.url.endswith("/ui/login"), r.url
    # A console cookie is no agent credential.
    cookie = next(c for c in alice.context.cookies() if c["name"] == "runbox_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    status, _ = api("GET", "/v1/incidents", token=None, headers={"Cookie": f"runbox_console={cookie['value']}"})
    assert status == 401, status
    print("agent tokens and console sessions stay apart")


def screenshots(page, name):
    """The page at desktop and phone width, each checked by axe-core."""
    for width in (1400, 420):
        page.set_viewport_size({"width": width, "height": 1000})
        path = os.path.join(SHOTS, f"{name}-{width}.png")
        page.screenshot(path=path, full_page=True)
        wide = page.evaluate("document.scrollingElement.scrollWidth")
        assert wide <= width, f"{name} scrolls sideways at {width}px ({wide}px wide)"
        axe(page, name, width)
    page.set_viewport_size({"width": 1400, "height": 1000})


def axe(page, name, width):
    # axe runs in an isolated copy of the page: the console's CSP keeps
    # every injected script out of the real one.
    html = page.content()
    probe = page.context.browser.new_context(bypass_csp=True, viewport={"width": width, "height": 1000})
    p = probe.new_page()
    p.route(URL + "/probe", lambda route: route.fulfill(body=html, content_type="text/html",
                                                       headers={"Content-Security-Policy": ""}))
    p.route(URL + "/ui/events", lambda route: route.abort())
    p.goto(URL + "/probe")
    p.add_script_tag(path=os.environ["AXE_JS"])
    found = p.evaluate("axe.run(document, {resultTypes: ['violations']}).then(r => r.violations.map(v => [v.id, v.impact, v.nodes.length]))")
    probe.close()
    bad = [v for v in found if v[1] in ("serious", "critical")]
    assert not bad, f"{name} at {width}px: {bad}"
    print(f"{name} at {width}px: axe finds no serious or critical violation ({len(found)} minor)")


def main():
    os.makedirs(SHOTS, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=os.environ["CHROMIUM"], args=["--no-sandbox"])
        _, alice = enroll_and_sign_in(browser, "alice")
        _, bob = enroll_and_sign_in(browser, "bob")
        _, carol = enroll_and_sign_in(browser, "carol")
        live_approval_and_resolution(alice)
        two_person_rule(alice, bob)
        status_filter(second_passkey(browser))
        sign_out(bob)
        refusals(browser, alice, carol)
        postmortem_names_the_passkey(alice)
        alice.goto(URL + "/ui")
        screenshots(alice, "console-incidents")
        browser.close()
    print("console: every check held")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        raise
