#!/usr/bin/env python3
"""Reads cargo's JSON build messages (`cargo test --no-run --message-format=json...`) on stdin and
prints one line per test binary: its package directory, the executable and a label
(`package/kind/name`), tab-separated, sorted by label. Other messages pass through to stderr so the
build's own output stays visible."""
import json
import os
import sys


def main():
    binaries = {}
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            sys.stderr.write(line)
            continue
        if message.get("reason") != "compiler-artifact":
            continue
        if not message.get("profile", {}).get("test") or not message.get("executable"):
            continue
        target = message["target"]
        package = os.path.dirname(message["manifest_path"])
        label = f"{os.path.basename(package)}/{target['kind'][0]}/{target['name']}"
        binaries[label] = (package, message["executable"])
    for label in sorted(binaries):
        package, executable = binaries[label]
        print(f"{package}\t{executable}\t{label}")


if __name__ == "__main__":
    main()
