"""measure: a volume's use against its quota, from the read-only
`disk_usage` tool. Under the threshold the volume is `fine`; over it, the
step reports `pressure` (`pressure = "report"`, the runbook's first look)
or asks for another attempt (`pressure = "retry"`, after a prune)."""

import json

import runbox
from runbox import escalate, log, ok, retry, tools


class WitWorld(runbox.Step):
    def main(self, input):
        volume = input["volume"]
        threshold = int(input["threshold"])
        answer = tools.call("disk_usage", {"volume": volume})
        if answer.rc != 0:
            return escalate(f"disk_usage {volume} failed (rc {answer.rc}): {answer.stderr[:200]}")
        use = json.loads(answer.stdout)
        percent = int(use["percent"])
        log.info(f"{volume}: {use['used_mib']} of {use['quota_mib']} MiB ({percent}%)")
        if percent < threshold:
            return ok({"class": "fine", "percent": percent})
        if input.get("pressure") == "retry":
            return retry(f"{volume} is still at {percent}% (threshold {threshold}%)")
        return ok({"class": "pressure", "percent": percent})
