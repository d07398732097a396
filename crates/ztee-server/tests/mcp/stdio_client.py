"""Calls the stdio MCP server behind ztee's MCP guard with the official `mcp` client.

Usage: stdio_client.py [crash]   (ZTEE_URL, ZTEE_KEY in the environment); prints one JSON object.
`crash` also calls the tool that ends the server without an answer.
"""
import asyncio
import json
import os
import sys

from mcp import ClientSession
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


async def main():
    url = os.environ["ZTEE_URL"] + "/v1/mcp-guard/stdio-records"
    out = {}
    client = create_mcp_http_client(headers={"Authorization": "Bearer " + os.environ["ZTEE_KEY"]})
    async with client:
        async with streamable_http_client(url, http_client=client) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                init = await session.initialize()
                out["server"] = init.server_info.name
                out["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
                for name, args in (("where", {}), ("lookup_customer", {"name": "Ada"})):
                    r = await session.call_tool(name, args)
                    out[name] = "".join(c.text for c in r.content if getattr(c, "text", None))
                if sys.argv[1:] == ["crash"]:
                    try:
                        await session.call_tool("crash", {})
                        out["crash"] = "answered"
                    except Exception as e:  # the guard's JSON-RPC error
                        out["crash"] = str(e)
    print(json.dumps(out))


asyncio.run(main())
