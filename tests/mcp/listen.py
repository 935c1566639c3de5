#!/usr/bin/env python3
"""The official Python MCP client subscribes to an incident and is told of
its commits: `subscriptions/listen` (protocol 2026-07-28) over `runbox mcp`
on stdio, as an agent waiting without polling would.

    listen.py RUNBOX_BIN RUNBOOKS_DIR

RUNBOX_DATA_DIR comes from the environment. Prints `PASS` and exits 0, or
says what failed.
"""

import asyncio
import os
import sys

from mcp import Client, StdioServerParameters
from mcp.client.subscriptions import ResourceUpdated

INCIDENT = "INC-L"
URI = f"runbox://incidents/{INCIDENT}"
TIMELINE = f"{URI}/timeline"
OTHER = "runbox://incidents/INC-OTHER"


async def next_update(sub) -> ResourceUpdated:
    event = await asyncio.wait_for(anext(sub), timeout=10)
    assert isinstance(event, ResourceUpdated), event
    return event


async def main() -> int:
    runbox, runbooks = sys.argv[1:3]
    server = StdioServerParameters(
        command=runbox,
        args=["mcp", "--agent", "watcher", "--runbooks", runbooks],
        env=dict(os.environ),
    )
    async with Client(server) as client:
        print(f"protocol {client.protocol_version}", flush=True)
        for id in (INCIDENT, "INC-OTHER"):
            opened = await client.call_tool("open_incident", {"runbook": "recover", "id": id})
            assert not opened.is_error, opened
        async with client.listen(resource_subscriptions=[URI, TIMELINE, "file:///etc/passwd"]) as sub:
            honored = sorted(sub.honored.resource_subscriptions or [])
            assert honored == [URI, TIMELINE], f"honored {honored}"
            # Another incident's commit says nothing about this one.
            await client.call_tool("add_note", {"id": "INC-OTHER", "text": "elsewhere"})
            await client.call_tool("add_note", {"id": INCIDENT, "text": "looking"})
            seen = {(await next_update(sub)).uri, (await next_update(sub)).uri}
            assert seen == {URI, TIMELINE}, f"updates {seen}"
            # A step's commit too; then the resource shows it.
            await client.call_tool("run_step", {"id": INCIDENT})
            assert (await next_update(sub)).uri in (URI, TIMELINE)
            timeline = await client.read_resource(TIMELINE)
            assert "step" in timeline.contents[0].text, timeline
    print("PASS", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
