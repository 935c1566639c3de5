"""`examples/api-outage/run.sh --console` end to end, as its reader would
use it: the script prints the console's address and alice's one-time
enrollment link, runs the incident to its approval gate and waits. Here a
Chromium (with a DevTools virtual authenticator as alice's passkey) takes
the place of the person: it opens the link, enrolls, signs in, opens the
incident the script names and approves the restart. The script must then
run the incident to its end and exit 0.

Usage: example_console.py RUN_SH (with run.sh's environment: RUNBOX_BIN,
RUNBOX_STEPS_DIR, RUNBOX_DATA_DIR, TMPDIR) and CHROMIUM. Prints run.sh's
output; exit status 0 when every check held.
"""

import os
import re
import subprocess
import sys
import threading

from playwright.sync_api import sync_playwright

WAIT_S = 600


def lines_of(proc, seen):
    """run.sh's output, a line at a time, also kept in `seen`."""
    for line in proc.stdout:
        seen.append(line)
        yield line.rstrip("\n")


def until(lines, pattern):
    """The first match of `pattern` in the lines still to come."""
    for line in lines:
        if m := re.search(pattern, line):
            return m
    raise AssertionError(f"run.sh ended before printing {pattern!r}")


def main():
    seen = []
    proc = subprocess.Popen([sys.argv[1], "--console"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # Nothing here may wait forever on a script that stopped talking.
    timer = threading.Timer(WAIT_S, proc.kill)
    timer.start()
    try:
        lines = lines_of(proc, seen)
        link = until(lines, r"^(http://localhost:\d+/ui/enroll#\S+)$").group(1)
        opened = until(lines, r"open (http://localhost:\d+)/ui/incidents/(\S+), sign in")
        url, incident = opened.group(1), opened.group(2)
        os.environ["RUNBOX_URL"] = url
        os.environ.setdefault("RUNBOX_AGENT_TOKEN", "")
        import console_test as ui  # reads RUNBOX_URL when imported
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=os.environ["CHROMIUM"], args=["--no-sandbox"])
            page = browser.new_context().new_page()
            ui.authenticator(page.context, page)
            page.goto(link)
            page.click("#enroll")
            ui.wait_text(page, "#status", "Enrolled alice")
            page.goto(url + "/ui/login")
            page.click("#login")
            page.wait_for_url(url + "/ui", timeout=ui.WAIT_MS)
            ui.approve(page, incident)
            page.locator("main h1 + dl .badge.resolved").wait_for(timeout=ui.WAIT_MS)
            browser.close()
        for _ in lines:
            pass
        assert proc.wait() == 0, f"run.sh exited {proc.returncode}"
    finally:
        timer.cancel()
        proc.kill()
        print("".join(seen))
    output = "".join(seen)
    for needle in ("/ui/enroll#", "approve the restart", "resolved"):
        assert needle in output, f"run.sh printed no {needle!r}"
    print(f"run.sh --console: alice enrolled, approved {incident} in the browser, and it resolved")


if __name__ == "__main__":
    main()
