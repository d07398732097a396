"""Calls a third-party MCP server through ztee's MCP guard with the official `mcp` client.

Usage: guard_client.py [list | full | call NAME]   (ZTEE_URL, ZTEE_KEY in the environment)
"""
import asyncio
import json
import os
import sys

from mcp import ClientSession
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


async def call(session, name, args):
    try:
        r = await session.call_tool(name, args)
        return {"error": bool(r.is_error),
                "text": "".join(c.text for c in r.content if getattr(c, "text", None))}
    except Exception as e:  # a JSON-RPC error from the guard
        return {"error": True, "refused": True, "text": str(e)}


async def main():
    """`list`: lists the tools once (a new or changed set is held: prints the guard's refusal);
    `full`: lists them and calls each kind of tool; `call NAME`: calls one tool without listing."""
    phase = sys.argv[1] if len(sys.argv) > 1 else "full"
    url = os.environ["ZTEE_URL"] + "/v1/mcp-guard/records"
    out = {}
    client = create_mcp_http_client(headers={"Authorization": "Bearer " + os.environ["ZTEE_KEY"]})
    async with client:
        async with streamable_http_client(url, http_client=client) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                if phase == "call":
                    out["call"] = await call(session, sys.argv[2], {"a": 1, "b": 2})
                    print(json.dumps(out))
                    return
                try:
                    out["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
                except Exception as e:  # a JSON-RPC error from the guard: the set is held
                    out["held"] = str(e)
                    print(json.dumps(out))
                    return
                if phase == "list":
                    print(json.dumps(out))
                    return
                out["lookup"] = await call(session, "lookup_customer", {"name": "Ada"})
                out["post_before"] = await call(
                    session, "post_message", {"channel": "ops", "text": "order shipped"})
                out["injection"] = await call(session, "fetch_page", {"url": "https://shop.example"})
                out["post_after"] = await call(
                    session, "post_message", {"channel": "ops", "text": "order shipped"})
                out["destructive"] = await call(session, "delete_file", {"path": "/etc/passwd"})
                out["pan_in_args"] = await call(
                    session, "lookup_customer", {"name": "4111 1111 1111 1111"})
                out["poisoned"] = await call(session, "add_numbers", {"a": 1, "b": 2})
    print(json.dumps(out))


asyncio.run(main())
