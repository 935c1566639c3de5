#!/usr/bin/env python3
"""A scripted recovery assistant (no LLM) for the api-outage incident.

It speaks MCP to `runbox mcp` with the official Python `mcp` client, and
does what an AI assistant would: opens the incident, runs one step at a
time, reads `you_may` to learn what it may do next, waits (await_change)
for the approval it cannot give itself, and finishes the recovery. A human
approves from the CLI meanwhile; the decision reaches the MCP server
through its control socket.

    agent.py RUNBOX_BIN RUNBOOKS_DIR INCIDENT_ID

The mutation token comes from RUNBOX_MUTATION_TOKEN in the environment of
the server, never from a tool argument.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def say(line: str) -> None:
    print(f"agent: {line}", flush=True)


async def call(session: ClientSession, tool: str, **args) -> dict:
    result = await session.call_tool(tool, args)
    data = result.structured_content
    if data is None:
        data = json.loads(result.content[0].text)
    if result.is_error:
        error = data.get("error", {})
        raise SystemExit(f"agent: {tool} refused: {error.get('code')}: {error.get('message')}")
    return data


async def recover(session: ClientSession, incident: str) -> str:
    opened = await call(
        session, "open_incident", runbook="api-outage", params={"service": "api"}, id=incident
    )
    say(opened["done"])
    while True:
        inc = await call(session, "get_incident", id=incident)
        if inc["status"] in ("resolved", "failed"):
            return inc["status"]
        action = inc["you_may"][0]
        if action["tool"] == "run_step":
            report = await call(session, "run_step", id=incident)
            record = report.get("record") or {}
            say(f"ran {record.get('step')}#{record.get('attempt')}: {record.get('outcome')} -> {report['state']}")
        elif action["tool"] == "await_change":
            say(f"waiting: {action['why']}")
            await call(session, "await_change", id=incident, timeout_s=45)
        else:
            reason = f"cannot go on: {action['why']}"
            await call(session, "escalate", id=incident, reason=reason)
            say(f"escalated: {reason}")
            return "escalated"


async def main() -> int:
    runbox, runbooks, incident = sys.argv[1:4]
    server = StdioServerParameters(
        command=runbox,
        args=["mcp", "--agent", "assistant", "--runbooks", runbooks],
        env=dict(os.environ),
    )
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = [t.name for t in (await session.list_tools()).tools]
            say(f"connected to runbox over MCP; tools: {', '.join(tools)}")
            status = await recover(session, incident)
            await call(session, "add_note", id=incident, text=f"assistant: incident {status}")
            say(f"done: {incident} is {status}")
            return 0 if status == "resolved" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
