"""Drives ztee's E2B-compatible API with the official E2B Python SDKs, unchanged.

Run by tests/e2b_sdk.rs with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY pointing at a ztee
gateway that boots real microVMs, and OTHER_TENANT_KEY holding a key of another tenant. Each
check asserts; the program prints one JSON line of what it measured and exits 0 only if every
check passed.
"""

import asyncio
import json
import os
import time

from e2b import AsyncSandbox, CommandExitException, NotFoundException, PtySize, Sandbox as PlainSandbox
from e2b_code_interpreter import Sandbox

PAN = "4111" + "1111" * 3

report = {}


def check(name, condition, detail=""):
    if not condition:
        raise AssertionError(f"{name}: {detail}")
    report.setdefault("passed", []).append(name)


sbx = Sandbox.create(timeout=300)
report["sandbox"] = sbx.sandbox_id

# Commands in the foreground, with streamed callbacks.
seen = []
r = sbx.commands.run("echo hello; echo oops >&2", on_stdout=lambda s: seen.append(s))
check("foreground stdout", r.stdout == "hello\n", repr(r.stdout))
check("foreground stderr", r.stderr == "oops\n", repr(r.stderr))
check("foreground exit code", r.exit_code == 0, r.exit_code)
check("streamed callback", "".join(seen) == "hello\n", repr(seen))

try:
    sbx.commands.run("echo before; exit 3")
    check("non-zero exit raises", False, "no exception")
except CommandExitException as e:
    check("non-zero exit raises", e.exit_code == 3 and "before" in e.stdout, repr(e))

# A card number a command prints reaches the SDK masked.
r = sbx.commands.run(f"python3 -c \"print('{PAN[:8]}' + '{PAN[8:]}')\"")
check("PAN from a command is masked", PAN not in r.stdout and "1111" in r.stdout, repr(r.stdout))

# Environment and working directory.
r = sbx.commands.run("echo $GREETING; pwd", envs={"GREETING": "hi"}, cwd="/tmp")
check("envs and cwd", r.stdout == "hi\n/tmp\n", repr(r.stdout))

# Background processes: list, kill.
h = sbx.commands.run("sleep 60", background=True)
pids = [p.pid for p in sbx.commands.list()]
check("background process listed", h.pid in pids, f"{h.pid} not in {pids}")
check("kill", sbx.commands.kill(h.pid) is True)
try:
    h.wait()
    check("killed process ends", False, "wait returned normally")
except CommandExitException as e:
    check("killed process ends", e.exit_code != 0, repr(e))
time.sleep(0.5)
check("killed process gone", h.pid not in [p.pid for p in sbx.commands.list()])
check("kill of a gone process", sbx.commands.kill(h.pid) is False)

# stdin.
h = sbx.commands.run("cat", background=True, stdin=True)
sbx.commands.send_stdin(h.pid, "hello stdin\n")
sbx.commands.close_stdin(h.pid)
r = h.wait()
check("stdin", r.stdout == "hello stdin\n", repr(r.stdout))

# Reconnect to a running process.
h = sbx.commands.run("sleep 2; echo late", background=True)
h2 = sbx.commands.connect(h.pid)
r = h2.wait()
check("connect", "late" in r.stdout, repr(r.stdout))

# A pseudo-terminal: typed input, its size, a resize.
term = sbx.pty.create(PtySize(rows=24, cols=80))
sbx.pty.send_stdin(term.pid, b"echo pty-$((6*7)); stty size\n")
time.sleep(1)
check("pty resize", sbx.pty.resize(term.pid, PtySize(rows=30, cols=100)) is None)
sbx.pty.send_stdin(term.pid, b"stty size; tty; exit\n")
seen = []
term.wait(on_pty=lambda data: seen.append(data))
text = b"".join(seen).decode(errors="replace")
check("pty output", "pty-42" in text, repr(text))
check("pty size", "24 80" in text and "30 100" in text, repr(text))
check("pty is the controlling terminal", "/dev/pts/" in text, repr(text))

# Files.
info = sbx.files.write("/home/user/notes.txt", "first line\n")
check("write", info.path == "/home/user/notes.txt", repr(info))
check("read text", sbx.files.read("/home/user/notes.txt") == "first line\n")
check("read bytes", sbx.files.read("notes.txt", format="bytes") == b"first line\n")
names = [e.name for e in sbx.files.list("/home/user")]
check("list", "notes.txt" in names, repr(names))
check("exists", sbx.files.exists("/home/user/notes.txt") is True)
check("make_dir", sbx.files.make_dir("/home/user/data") is True)
check("make_dir again", sbx.files.make_dir("/home/user/data") is False)
entry = sbx.files.get_info("/home/user/notes.txt")
check("get_info", entry.size == len("first line\n") and entry.type.value == "file", repr(entry))
moved = sbx.files.rename("/home/user/notes.txt", "/home/user/data/notes.txt")
check("rename", moved.path == "/home/user/data/notes.txt", repr(moved))

# watch_dir: the sync SDK polls a watcher; the async SDK reads the WatchDir stream.
watcher = sbx.files.watch_dir("/home/user/data")
sbx.files.write("/home/user/data/seen.txt", "x")
polled = []
for _ in range(50):
    polled += watcher.get_new_events()
    if any(e.name == "seen.txt" and e.type.value == "create" for e in polled):
        break
    time.sleep(0.1)
watcher.stop()
check("watch_dir (sync, polled)", any(e.name == "seen.txt" for e in polled), repr(polled))


async def watch_streamed():
    async_sbx = await AsyncSandbox.connect(sbx.sandbox_id)
    streamed = []
    handle = await async_sbx.files.watch_dir("/home/user/data", on_event=streamed.append)
    await async_sbx.files.write("/home/user/data/streamed.txt", "y")
    for _ in range(50):
        if any(e.name == "streamed.txt" for e in streamed):
            break
        await asyncio.sleep(0.1)
    await handle.stop()
    return streamed


streamed = asyncio.run(watch_streamed())
check(
    "watch_dir (async, streamed)",
    any(e.name == "streamed.txt" and e.type.value == "create" for e in streamed),
    repr(streamed),
)
sbx.files.remove("/home/user/data")
check("remove", sbx.files.exists("/home/user/data") is False)
try:
    sbx.files.read("/home/user/missing.txt")
    check("missing file", False, "no exception")
except NotFoundException:
    check("missing file", True)

# Stateful code.
ex = sbx.run_code("x = 41")
check("run_code no error", ex.error is None, repr(ex.error))
ex = sbx.run_code("x + 1")
check("state kept", ex.text == "42", repr(ex.results))
ex = sbx.run_code("print('printed'); 6*7")
check("run_code stdout", ex.logs.stdout == ["printed\n"], repr(ex.logs))
check("run_code result", ex.text == "42", repr(ex.results))
ex = sbx.run_code(
    "class Table:\n"
    "    def _repr_html_(self): return '<table><tr><td>1</td></tr></table>'\n"
    "    def __repr__(self): return 'Table()'\n"
    "Table()"
)
check("rich result", ex.results[0].html.startswith("<table>") and ex.text == "Table()", repr(ex.results))
ex = sbx.run_code("1/0")
check("error", ex.error is not None and ex.error.name == "ZeroDivisionError", repr(ex.error))
check("error traceback", "ZeroDivisionError" in ex.error.traceback, repr(ex.error))
ex = sbx.run_code(f"print('{PAN[:8]}' + '{PAN[8:]}')")
check("PAN from code is masked", PAN not in "".join(ex.logs.stdout), repr(ex.logs))
ctx = sbx.create_code_context()
ex = sbx.run_code("y = 1", context=ctx)
ex = sbx.run_code("'y' in globals()")
check("contexts are separate", ex.text == "False", repr(ex.results))

# Timeout, connect, list.
sbx.set_timeout(120)
again = Sandbox.connect(sbx.sandbox_id)
check("connect to a sandbox", again.commands.run("echo again").stdout == "again\n")
listed = [s.sandbox_id for s in PlainSandbox.list().next_items()]
check("list sandboxes", sbx.sandbox_id in listed, repr(listed))

# Another tenant does not see it.
other = os.environ["OTHER_TENANT_KEY"]
try:
    Sandbox.connect(sbx.sandbox_id, api_key=other)
    check("other tenant: connect", False, "connected")
except Exception as e:  # noqa: BLE001 - the SDK's not-found type varies by version
    check("other tenant: connect", "not found" in str(e).lower(), repr(e))
check("other tenant: kill", PlainSandbox.kill(sbx.sandbox_id, api_key=other) is False)
listed = [s.sandbox_id for s in PlainSandbox.list(api_key=other).next_items()]
check("other tenant: list", sbx.sandbox_id not in listed, repr(listed))

# Timing of a warm run_code and a warm command, for the benchmark record.
samples = []
for _ in range(20):
    t = time.perf_counter()
    sbx.run_code("6*7")
    samples.append((time.perf_counter() - t) * 1000)
samples.sort()
report["run_code_median_ms"] = samples[len(samples) // 2]

check("kill sandbox", sbx.kill() is True)
print(json.dumps(report))
