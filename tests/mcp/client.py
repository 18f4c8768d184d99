"""The official MCP Python SDK (PyPI) as the client of Studio Core's MCP server,
over streamable HTTP (`/mcp`) or stdio (`studio mcp`), as an agent would use it.

    python client.py http|stdio BASE_URL KEY STUDIO_BINARY

Prints one JSON line: what the SDK got.
"""
import asyncio
import base64
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client


async def exercise(session):
    await session.initialize()
    tools = (await session.list_tools()).tools
    generate = next(t for t in tools if t.name == "generate")
    r = await session.call_tool("generate", {"workflow": "smoke", "prompt": "an agent's lighthouse", "seed": 7})
    images = [c for c in r.content if c.type == "image"]
    job = json.loads(next(c for c in r.content if c.type == "text").text)
    again = await session.call_tool("get_job", {"job_id": job["job_id"]})
    workflows = json.loads((await session.call_tool("list_workflows", {})).content[0].text)
    bad = await session.call_tool("get_job", {"job_id": "not-a-job"})
    return {
        "tools": sorted(t.name for t in tools),
        "workflow_choices": generate.inputSchema["properties"]["workflow"]["enum"],
        "images": [[i.mimeType, base64.b64decode(i.data)[:4] == b"\x89PNG"] for i in images],
        "status": job["status"],
        "seed": job["seed"],
        "again": json.loads(again.content[0].text)["status"],
        "smoke_params": sorted(next(w for w in workflows if w["name"] == "smoke")["parameters"]["properties"]),
        "is_error": r.isError,
        "bad_is_error": bad.isError,
    }


async def main():
    mode, url, key, studio = sys.argv[1:5]
    if mode == "http":
        headers = {"Authorization": f"Bearer {key}"}
        async with streamablehttp_client(url + "/mcp", headers=headers) as (read, write, _):
            async with ClientSession(read, write) as s:
                out = await exercise(s)
    else:
        params = StdioServerParameters(command=studio, args=["mcp", "--server", url, "--api-key", key])
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as s:
                out = await exercise(s)
    print(json.dumps(out))


asyncio.run(main())
