"""A passkey on a store runners share (etcd), in Chromium with a DevTools
virtual authenticator: the link one runner made opens at another runner's
console, the passkey made there signs nothing until one of the fleet's
humans lists it with a signed change, and then signs its human in.

Started by tests/all/console.rs, which passes RUNBOX_URL (the serving
runner's console), LINK (the enrollment link), ACCEPT (the command that
lists the passkey, a JSON list with FINGERPRINT in its place) and
CHROMIUM. Prints the fingerprint; exit status 0 when every check held.
"""

import json
import os
import re
import subprocess

from playwright.sync_api import sync_playwright

os.environ.setdefault("RUNBOX_AGENT_TOKEN", "")
import console_test as ui  # noqa: E402 (reads RUNBOX_URL when imported)


def sign_in(page, url):
    page.goto(url + "/ui/login")
    page.click("#login")


def main():
    url = os.environ["RUNBOX_URL"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=os.environ["CHROMIUM"], args=["--no-sandbox"])
        context = browser.new_context()
        page = context.new_page()
        ui.authenticator(context, page)
        page.goto(os.environ["LINK"])
        page.click("#enroll")
        ui.wait_text(page, "#status", "runbox human accept passkey:")
        status = page.inner_text("#status")
        fingerprint = re.search(r"runbox human accept (passkey:\S+)", status).group(1)
        # The link works once.
        page.goto(os.environ["LINK"])
        page.click("#enroll")
        ui.wait_text(page, "#status", "unknown, used or expired")
        # Waiting to be listed, it signs nobody in.
        sign_in(page, url)
        ui.wait_text(page, "#status", "is not registered")
        assert page.url.startswith(url + "/ui/login"), page.url
        accept = [a.replace("FINGERPRINT", fingerprint) for a in json.loads(os.environ["ACCEPT"])]
        done = subprocess.run(accept, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        sign_in(page, url)
        page.wait_for_url(url + "/ui", timeout=ui.WAIT_MS)
        browser.close()
    print(fingerprint)


if __name__ == "__main__":
    main()
