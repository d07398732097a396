#!/usr/bin/env python3
"""Writes a gzip-compressed newc cpio archive (a Linux initramfs) without needing root.

    mkcpio.py OUT.cpio.gz /init=build/init /lib/virtio.ko=/path/virtio.ko ...

Each argument is ARCHIVE_PATH=HOST_FILE; parent directories are created, /dev/console (char 5:1,
which the kernel opens as the first stdin/stdout/stderr of init) is always added, and every entry
gets mtime 0 and owner root, so the same inputs give the same archive.
"""
import gzip
import os
import stat
import sys


def header(ino, mode, size, name, rdev=(0, 0), nlink=1):
    name_bytes = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(name_bytes), 0]
    raw = b"070701" + b"".join(b"%08X" % f for f in fields) + name_bytes
    return raw + b"\0" * (-len(raw) % 4)


def pad(data):
    return data + b"\0" * (-len(data) % 4)


def main(argv):
    if len(argv) < 2:
        sys.exit("usage: mkcpio.py OUT.cpio.gz ARCHIVE_PATH=HOST_FILE...")
    out = argv[1]
    files = {}
    for spec in argv[2:]:
        archive_path, sep, host = spec.partition("=")
        if not sep or not archive_path.startswith("/"):
            sys.exit(f"mkcpio.py: '{spec}' is not ARCHIVE_PATH=HOST_FILE with an absolute ARCHIVE_PATH")
        try:
            with open(host, "rb") as f:
                data = f.read()
            host_mode = os.stat(host).st_mode
        except OSError as e:
            sys.exit(f"mkcpio.py: cannot read {host}: {e.strerror}")
        files[archive_path.lstrip("/")] = (data, 0o755 if host_mode & 0o111 else 0o644)

    dirs = {"dev"}
    for path in files:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))

    chunks = []
    ino = 1
    for d in sorted(dirs):
        chunks.append(header(ino, stat.S_IFDIR | 0o755, 0, d, nlink=2))
        ino += 1
    chunks.append(header(ino, stat.S_IFCHR | 0o600, 0, "dev/console", rdev=(5, 1)))
    ino += 1
    for path in sorted(files):
        data, mode = files[path]
        chunks.append(header(ino, stat.S_IFREG | mode, len(data), path) + pad(data))
        ino += 1
    chunks.append(header(0, 0, 0, "TRAILER!!!"))

    tmp = out + ".tmp"
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(b"".join(chunks))
    os.replace(tmp, out)


if __name__ == "__main__":
    main(sys.argv)
