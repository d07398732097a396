"""A third-party MCP server that speaks stdio (newline-delimited JSON-RPC), with no dependencies:
the guard runs it inside a microVM. Its tools say where they run, and return a card number."""
import json
import sys
import uuid

# Which process answers: a new one gets a new name.
PROCESS = uuid.uuid4().hex[:12]

TOOLS = [
    {"name": "where", "description": "Say where this server runs.",
     "inputSchema": {"type": "object", "properties": {}}},
    {"name": "lookup_customer", "description": "Find a customer record.",
     "inputSchema": {"type": "object", "properties": {"name": {"type": "string"}}}},
    {"name": "crash", "description": "Stop the server without an answer.",
     "inputSchema": {"type": "object", "properties": {}}},
]
initialized = 0


def answer(id, result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": id, "result": result}) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    message = json.loads(line)
    method, id = message.get("method"), message.get("id")
    if id is None:
        continue
    if method == "initialize":
        initialized += 1
        answer(id, {"protocolVersion": message["params"]["protocolVersion"],
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "stdio-records", "version": "1"}})
    elif method == "tools/list":
        answer(id, {"tools": TOOLS})
    elif method == "tools/call":
        name = message["params"]["name"]
        if name == "crash":
            sys.exit(3)
        if name == "where":
            import os
            text = (f"kernel {os.uname().release}; process {PROCESS}; "
                    f"initialized {initialized} time(s)")
        else:
            # Built at run time: a card number in the command itself is refused by inbound DLP.
            card = " ".join(["4111"] + ["1111"] * 3)
            text = f"Customer {message['params']['arguments'].get('name')}: card {card}"
        answer(id, {"content": [{"type": "text", "text": text}], "isError": False})
    elif method == "ping":
        answer(id, {})
    else:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": id,
                                     "error": {"code": -32601, "message": "no such method"}}) + "\n")
        sys.stdout.flush()
