"""How long a committed event takes to appear in open consoles.

CONSOLES pages (default 100) each show one of INCIDENTS running incidents
(default 64), signed in as one human. An agent runs the incidents' steps
round-robin over HTTP for DURATION seconds. Each page notes, whenever its
timeline grows, now minus the newest event's commit time (same machine,
same clock). Prints one JSON object: samples, p50_ms, p95_ms, max_ms.

Environment: RUNBOX, RUNBOX_URL (http://localhost:PORT), RUNBOX_AGENT_TOKEN,
CHROMIUM, and optionally CONSOLES, INCIDENTS, DURATION, RUNBOOK (default
`bench`: a runbook of many quick steps) and RATE: steps a second across all
incidents (default 0: as many as the agent can run, 4 at a time).
"""

import concurrent.futures
import json
import os
import time

from playwright.sync_api import sync_playwright

from console_test import URL, api, authenticator, runbox

CONSOLES = int(os.environ.get("CONSOLES", "100"))
INCIDENTS = int(os.environ.get("INCIDENTS", "64"))
DURATION = float(os.environ.get("DURATION", "30"))
RATE = float(os.environ.get("RATE", "0"))
RUNBOOK = os.environ.get("RUNBOOK", "bench")

# Runs in every page before its own scripts (injected through DevTools, so
# the console's CSP does not apply to it): records, each time the timeline
# grows, how long ago its newest event was committed.
OBSERVE_JS = """
window.__lat = [];
let last = null;
const look = () => {
  const times = document.querySelectorAll('ol.timeline time');
  if (!times.length) return;
  const newest = times[times.length - 1].textContent;
  if (last !== null && newest !== last) window.__lat.push(Date.now() - Date.parse(newest));
  last = newest;
};
new MutationObserver(look).observe(document, {childList: true, subtree: true});
document.addEventListener('DOMContentLoaded', look);
"""


def sign_in(browser):
    context = browser.new_context()
    page = context.new_page()
    authenticator(context, page)
    link = runbox("human", "add", "watcher", "--passkey").strip().splitlines()[-1]
    page.goto(link)
    page.click("#enroll")
    page.locator("#status", has_text="Enrolled").wait_for()
    page.goto(URL + "/ui/login")
    page.click("#login")
    page.wait_for_url(URL + "/ui")
    return context.cookies()


def drive(ids, until):
    """Runs steps round-robin until `until`, RATE a second if set; returns
    how many committed."""
    def one(inc):
        status, _ = api("POST", f"/v1/incidents/{inc}/steps:run", {})
        return status == 200
    done = 0
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        if not RATE:
            while time.time() < until:
                done += sum(pool.map(one, ids))
            return done
        start, runs, k = time.time(), [], 0
        while (at := start + k / RATE) < until:
            time.sleep(max(0.0, at - time.time()))
            runs.append(pool.submit(one, ids[k % len(ids)]))
            k += 1
        return sum(r.result() for r in runs)


def every_page_shows_its_whole_timeline(pages, ids):
    """Whatever mix of pushed parts and fetches each page took in, it shows
    every event of its incident once, in order: none lost, none twice."""
    for i, page in enumerate(pages):
        inc = ids[i % INCIDENTS]
        status, page_of = api("GET", f"/v1/incidents/{inc}/timeline")
        assert status == 200 and page_of["next_after"] is None, (status, page_of)
        want = [e["seq"] for e in page_of["events"]]
        deadline = time.time() + 10
        while (shown := page.evaluate(SEQS_JS)) != want and time.time() < deadline:
            time.sleep(0.2)
        assert shown == want, f"{inc}: the page shows events {shown}, the store has {want}"


SEQS_JS = "[...document.querySelectorAll('#timeline > li')].map((li) => Number(li.dataset.seq))"


def main():
    ids = [f"LAT{os.getpid()}-{i}" for i in range(INCIDENTS)]
    for inc in ids:
        status, body = api("POST", "/v1/incidents", {"runbook": RUNBOOK, "id": inc})
        assert status == 201, (status, body)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=os.environ["CHROMIUM"], args=["--no-sandbox"])
        cookies = sign_in(browser)
        pages = []
        # Ten pages to a context: one renderer process per page either way.
        for i in range(CONSOLES):
            if i % 10 == 0:
                context = browser.new_context()
                context.add_cookies(cookies)
                context.add_init_script(OBSERVE_JS)
            page = context.new_page()
            page.goto(f"{URL}/ui/incidents/{ids[i % INCIDENTS]}")
            pages.append(page)
        time.sleep(1)
        committed = drive(ids, time.time() + DURATION)
        time.sleep(1)
        samples = sorted(x for p in pages for x in p.evaluate("window.__lat"))
        every_page_shows_its_whole_timeline(pages, ids)
        browser.close()
    assert samples, "no console saw a commit"
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
    print(json.dumps({
        "consoles": CONSOLES, "incidents": INCIDENTS, "rate": RATE or None,
        "steps_committed": committed,
        "samples": len(samples), "p50_ms": pick(0.50), "p95_ms": pick(0.95), "max_ms": samples[-1],
    }))


if __name__ == "__main__":
    main()
