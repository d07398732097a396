"""Latency of the E2B SDK calls against ztee, beside the REST API doing the same work, in one run.

Run by `cargo bench -p ztee-server --bench e2b` (which starts the gateway and its VMs); prints one
JSON object of samples in milliseconds.
"""

import json
import os
import sys
import time
import urllib.request

from e2b_code_interpreter import Sandbox

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30"))
CREATES = int(os.environ.get("BENCH_CREATES", "6"))
URL = os.environ["E2B_API_URL"]
KEY = os.environ["E2B_API_KEY"]


def rest(method, path, body=None):
    request = urllib.request.Request(
        URL + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        text = response.read()
        return json.loads(text) if text else None


def timed(samples, name, call):
    t = time.perf_counter()
    result = call()
    samples.setdefault(name, []).append((time.perf_counter() - t) * 1000)
    return result


samples = {}
for _ in range(CREATES):
    sbx = timed(samples, "e2b: Sandbox.create()", lambda: Sandbox.create(timeout=120))
    timed(samples, "e2b: sandbox.kill()", sbx.kill)
    made = timed(samples, "rest: POST /v1/sandboxes", lambda: rest("POST", "/v1/sandboxes", {"timeout_s": 120}))
    timed(samples, "rest: DELETE /v1/sandboxes/{id}", lambda: rest("DELETE", f"/v1/sandboxes/{made['id']}"))

sbx = Sandbox.create(timeout=300)
made = rest("POST", "/v1/sandboxes", {"timeout_s": 300})
sbx.run_code("6*7")  # starts the context
for _ in range(ROUNDS):
    timed(samples, "e2b: commands.run(\"true\")", lambda: sbx.commands.run("true"))
    # The SDK runs a command as `/bin/bash -l -c CMD`: the REST twin runs the same argv.
    timed(
        samples,
        "rest: commands bash -l -c true",
        lambda: rest(
            "POST",
            f"/v1/sandboxes/{made['id']}/commands",
            {"cmd": ["/bin/bash", "-l", "-c", "true"]},
        ),
    )
    timed(
        samples,
        "rest: commands true",
        lambda: rest("POST", f"/v1/sandboxes/{made['id']}/commands", {"cmd": ["true"]}),
    )
    result = timed(samples, "e2b: run_code(\"6*7\") warm", lambda: sbx.run_code("6*7"))
    if result.text != "42":
        sys.exit(f"run_code answered {result.text!r}")
sbx.kill()
rest("DELETE", f"/v1/sandboxes/{made['id']}")
print(json.dumps(samples))
