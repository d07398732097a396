"""Uses ztee's MCP server with the official `mcp` client over streamable HTTP.

Usage: client.py   (ZTEE_URL and ZTEE_KEY in the environment)
Prints one JSON object with what each step returned.
"""
import asyncio
import json
import os

from mcp import ClientSession
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


def text_of(result):
    return {"error": bool(result.is_error),
            "text": "".join(c.text for c in result.content if getattr(c, "text", None))}


async def main():
    url = os.environ["ZTEE_URL"] + "/v1/mcp"
    out = {}
    client = create_mcp_http_client(headers={"Authorization": "Bearer " + os.environ["ZTEE_KEY"]})
    async with client:
        async with streamable_http_client(url, http_client=client) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = await session.list_tools()
                out["tools"] = sorted(t.name for t in tools.tools)
                # A card number in the input is refused by policy (inbound DLP), as on REST.
                out["pan_in_input"] = text_of(await session.call_tool(
                    "run_command", {"cmd": ["sh", "-c", "echo card 4111 1111 1111 1111"]}))
                # One made inside the VM comes back masked (outbound DLP).
                out["run_command"] = text_of(await session.call_tool(
                    "run_command", {"cmd": ["python3", "-c",
                                            "print('card', '4111' + ' 1111' * 3); print('done')"]}))
                out["run_code"] = text_of(await session.call_tool(
                    "run_code", {"language": "python", "code": "print(6 * 7)"}))
                created = text_of(await session.call_tool("sandbox_create", {}))
                out["sandbox_create"] = created
                sid = json.loads(created["text"])["id"]
                out["write_file"] = text_of(await session.call_tool(
                    "write_file", {"sandbox_id": sid, "path": "/home/user/note.txt",
                                   "content": "hello from mcp\n"}))
                out["read_file"] = text_of(await session.call_tool(
                    "read_file", {"sandbox_id": sid, "path": "/home/user/note.txt"}))
                out["sandbox_exec"] = text_of(await session.call_tool(
                    "sandbox_exec", {"sandbox_id": sid, "cmd": "wc -c < /home/user/note.txt"}))
                out["bad_args"] = text_of(await session.call_tool(
                    "sandbox_exec", {"sandbox_id": sid, "cmd": ["true"], "bogus": 1}))
                out["sandbox_close"] = text_of(await session.call_tool(
                    "sandbox_close", {"sandbox_id": sid}))
                out["after_close"] = text_of(await session.call_tool(
                    "sandbox_exec", {"sandbox_id": sid, "cmd": ["true"]}))
    # Without a key the endpoint refuses before any MCP handling.
    anon = create_mcp_http_client()
    async with anon:
        r = await anon.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
                            headers={"Accept": "application/json, text/event-stream"})
        out["anonymous_status"] = r.status_code
    print(json.dumps(out))


asyncio.run(main())
