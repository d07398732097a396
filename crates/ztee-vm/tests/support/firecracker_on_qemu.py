#!/usr/bin/env python3
"""A stand-in for the `firecracker` binary on hosts whose KVM cannot boot guests.

It serves the part of Firecracker's API ztee uses on the socket the jailer names, and at
InstanceStart boots what was configured with QEMU (microvm, TCG): the same kernel, initramfs and
read-only drive, an entropy device, and a virtio vsock device whose host side is
vhost-device-vsock (rust-vmm), which speaks Firecracker's hybrid vsock protocol
(`CONNECT <port>` / `OK <port>`) on the configured `uds_path`. The guest therefore runs the agent
over real virtio-vsock, and ztee's Firecracker backend drives it unchanged.

One difference from Firecracker is deliberate. vhost-device-vsock 0.3 accepts host connections
as soon as QEMU has given it the guest's memory, before the guest's driver has set up the
virtqueues; a `CONNECT` handled in that window makes its queue processing fail, which stops its
worker thread for good, and every `CONNECT` after that is left unread. Firecracker instead
answers (or closes) every connection. So vhost-device-vsock listens on a private path, and the
stand-in moves that socket to `uds_path` only once the agent has said on the console that it
listens on vsock, by which time the driver is up. Until then `uds_path` does not exist and the
engine retries, as it does while a real Firecracker's guest has no listener.

Paths in requests are resolved against the working directory (the VM's chroot, where the fake
jailer starts this program). Firecracker resets through the keyboard controller (`reboot=k`),
which QEMU's microvm lacks; the command line is given `reboot=t` instead, so the agent's final
reboot still ends the process.

Environment: ZTEE_VHOST_DEVICE_VSOCK (the vhost-device-vsock binary), ZTEE_QEMU (optional).
Usage: firecracker_on_qemu.py --api-sock PATH [--level LEVEL]
"""
import ctypes
import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

PR_SET_PDEATHSIG = 1
READY_MARKER = b"ztee-agent: listening"
config = {"drives": {}}
children = []


def inside(path):
    return os.path.join(os.getcwd(), path.lstrip("/"))


def die_with_parent():
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(argv, **kwargs):
    child = subprocess.Popen(argv, preexec_fn=die_with_parent, stdin=subprocess.DEVNULL, **kwargs)
    children.append(child)
    return child


def stop_all(code):
    for child in children:
        if child.poll() is None:
            child.kill()
    os._exit(code)


def boot():
    machine = config["machine-config"]
    source = config["boot-source"]
    memory = machine["mem_size_mib"]
    run = inside("run")
    vhost_socket = os.path.join(run, "vhost-user-vsock.sock")
    uds = inside(config["vsock"]["uds_path"])
    private_uds = os.path.join(run, "hybrid-vsock-backend.sock")
    vsock = spawn([os.environ["ZTEE_VHOST_DEVICE_VSOCK"], "--vm",
                   f"guest-cid={config['vsock']['guest_cid']},socket={vhost_socket},uds-path={private_uds}"],
                  stdout=subprocess.DEVNULL, stderr=sys.stderr)
    for _ in range(500):
        if os.path.exists(vhost_socket) or vsock.poll() is not None:
            break
        time.sleep(0.01)
    if not os.path.exists(vhost_socket):
        raise RuntimeError("vhost-device-vsock did not create its socket")
    cmdline = source["boot_args"].replace("reboot=k", "reboot=t")
    argv = [os.environ.get("ZTEE_QEMU") or "qemu-system-x86_64",
            "-machine", "microvm,accel=tcg,acpi=off,x-option-roms=off,rtc=on,isa-serial=on,memory-backend=mem",
            "-cpu", "max", "-m", f"{memory}M", "-smp", str(machine["vcpu_count"]),
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
            "-object", f"memory-backend-memfd,id=mem,size={memory}M,share=on",
            "-kernel", inside(source["kernel_image_path"]),
            "-append", cmdline, "-serial", "stdio"]
    if source.get("initrd_path"):
        argv += ["-initrd", inside(source["initrd_path"])]
    for i, drive in enumerate(config["drives"].values()):
        read_only = "on" if drive.get("is_read_only") else "off"
        argv += ["-drive", f"id=d{i},format=raw,if=none,read-only={read_only},file={inside(drive['path_on_host'])}",
                 "-device", f"virtio-blk-device,drive=d{i}"]
    if "entropy" in config:
        argv += ["-object", "rng-random,id=rng,filename=/dev/urandom", "-device", "virtio-rng-device,rng=rng"]
    argv += ["-chardev", f"socket,id=vsock,path={vhost_socket}", "-device", "vhost-user-vsock-device,chardev=vsock"]
    qemu = spawn(argv, stdout=subprocess.PIPE)
    threading.Thread(target=relay_console, args=(qemu.stdout, private_uds, uds), daemon=True).start()
    # Firecracker's process ends with its guest.
    threading.Thread(target=lambda: stop_all(qemu.wait()), daemon=True).start()


def relay_console(console, private_uds, uds):
    """Passes the guest console through, and publishes the hybrid vsock socket at `uds` once the
    agent listens (see the module's docstring)."""
    out = sys.stdout.buffer
    seen = b""
    published = False
    while True:
        chunk = console.read1(4096)
        if not chunk:
            return
        out.write(chunk)
        out.flush()
        if not published:
            seen = (seen + chunk)[-(len(READY_MARKER) + 4096):]
            if READY_MARKER in seen:
                os.rename(private_uds, uds)
                published = True


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def address_string(self):
        return "api"

    def answer(self, status, body=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def fault(self, message):
        self.answer(400, {"fault_message": message})

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_GET(self):
        if self.path == "/":
            self.answer(200, {"id": "anonymous-instance", "state": "Running" if len(children) else "Not started",
                              "vmm_version": "1.10.1 (QEMU stand-in)", "app_name": "Firecracker"})
        else:
            self.fault(f"GET {self.path} is not served by the QEMU stand-in")

    def do_PUT(self):
        body = self.body()
        if self.path in ("/machine-config", "/boot-source", "/vsock", "/entropy"):
            config[self.path.lstrip("/")] = body
            self.answer(204)
        elif self.path.startswith("/drives/"):
            config["drives"][self.path.split("/", 2)[2]] = body
            self.answer(204)
        elif self.path == "/actions" and body.get("action_type") == "InstanceStart":
            missing = [k for k in ("machine-config", "boot-source", "vsock") if k not in config]
            if missing:
                self.fault(f"cannot start: {', '.join(missing)} not configured")
                return
            try:
                boot()
            except Exception as err:  # the caller sees Firecracker's error shape
                self.fault(f"InstanceStart failed: {err}")
                return
            self.answer(204)
        elif self.path == "/actions" and body.get("action_type") == "SendCtrlAltDel":
            self.answer(204)
            threading.Thread(target=lambda: stop_all(0), daemon=True).start()
        else:
            self.fault(f"PUT {self.path} is not served by the QEMU stand-in")

    def do_PATCH(self):
        self.body()
        self.fault(f"PATCH {self.path} (pause, resume) is not served by the QEMU stand-in")


# One request at a time, on the main thread: the VMM's children are spawned there, and their
# parent-death signal follows the thread that spawned them.
class Server(socketserver.UnixStreamServer):
    pass


def main():
    args = sys.argv[1:]
    api_sock = inside(args[args.index("--api-sock") + 1])
    signal.signal(signal.SIGTERM, lambda *_: stop_all(0))
    if os.path.exists(api_sock):
        os.unlink(api_sock)
    with Server(api_sock, Api) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
