#!/usr/bin/env python3
"""Side-by-side throughput of ztee-dlp and Presidio's pattern recognizers on the same corpus.

Generates log-like text with a known set of embedded card numbers (1 MB and 100 MB by default,
never written into the repository), scans it with ztee (release build of the `corpus_scan`
example) and with presidio-analyzer's pattern recognizers (no NLP model: the recognizers are
called directly), and prints one table: throughput per core, findings, recall on the embedded
PANs, and the ztee/Presidio ratio.

Usage (from the repository root):
    python3 -m venv ~/.cache/ztee/venv-dlp-bench
    ~/.cache/ztee/venv-dlp-bench/bin/pip install -r crates/ztee-dlp/bench/requirements-bench.txt
    ~/.cache/ztee/venv-dlp-bench/bin/python crates/ztee-dlp/bench/presidio_compare.py

Options: --sizes-mb 1,100  --pan-every 50  --presidio-limit-mb N (scan only the first N MB with
Presidio and report its throughput on that part; ztee always scans everything)  --no-presidio
(ztee, grep and stream rows only; no Python packages needed)  --baseline BINARY (another build of
`corpus_scan`, e.g. main's, run on the same corpus in the same run, for before/after rows).

Every corpus also gets a GNU grep yardstick (`grep -cE` with a 13-19 digit card pattern, best of
3, whole process) and a stream row: `StreamScanner` redacting all entities in 4 KiB chunks.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

BRANDS = [("4", 16), ("51", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16),
          ("3528", 16), ("36", 14), ("62", 16), ("4", 13), ("4", 19)]


def luhn_complete(body):
    for d in range(10):
        digits = [int(c) for c in body + str(d)][::-1]
        total = 0
        for i, x in enumerate(digits):
            if i % 2:
                x *= 2
                if x > 9:
                    x -= 9
            total += x
        if total % 10 == 0:
            return body + str(d)
    raise AssertionError("unreachable")


def write_pan(rng, pan):
    style = rng.randrange(3)
    if style == 0:
        return pan
    sep = " " if style == 1 else "-"
    return sep.join(pan[i:i + 4] for i in range(0, len(pan), 4))


def generate(path, size, pan_every, seed=7):
    """Writes the corpus; returns the (start, end) character spans of the embedded PANs."""
    rng = random.Random(seed)
    spans = []
    written = 0
    line_no = 0
    paths = ["/api/v1/orders", "/api/v1/refunds", "/healthz", "/api/v1/customers"]
    with open(path, "w", encoding="ascii") as out:
        chunk = []
        while written < size:
            line_no += 1
            line = (
                f"2024-03-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
                f"{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z {rng.choice(['INFO', 'INFO', 'WARN', 'DEBUG'])} "
                f"[req-{rng.getrandbits(32):08x}] {rng.choice(['GET', 'POST'])} {rng.choice(paths)}/{rng.randint(0, 99999)} "
                f"status={rng.choice([200, 201, 404, 500])} took={rng.randint(0, 900)}ms user=u{rng.randint(0, 50000)} "
                f"ip=10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}"
            )
            if pan_every and line_no % pan_every == 0:
                prefix, length = rng.choice(BRANDS)
                body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
                pan = write_pan(rng, luhn_complete(body))
                line += " payment card="
                start = written + len(line)
                line += pan
                spans.append((start, start + len(pan)))
            line += "\n"
            chunk.append(line)
            written += len(line)
            if len(chunk) >= 10000:
                out.write("".join(chunk))
                chunk = []
        out.write("".join(chunk))
    return spans


def run_ztee(binary, path, entities):
    out = subprocess.run([binary, path, entities, "3"], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    return result["seconds"], result["findings"], {tuple(s) for s in result["card_spans"]}


def run_stream(binary, path):
    out = subprocess.run([binary, path, "all", "3", "stream"], check=True, capture_output=True,
                         text=True)
    result = json.loads(out.stdout)
    if "card_spans" in result:
        return None  # a build whose corpus_scan predates the stream mode
    return result["seconds"], result["findings"]


# What a quick grep for card numbers looks like: 13-19 digits, optionally in groups of four.
GREP_PATTERN = "[0-9]{4}[ -]?[0-9]{4}[ -]?[0-9]{4}[ -]?[0-9]{1,7}"


def run_grep(path):
    """Best of 3 whole-process times of `grep -cE` (C locale, as byte-oriented as grep gets)."""
    best = float("inf")
    count = 0
    env = dict(os.environ, LC_ALL="C")
    for _ in range(3):
        start = time.perf_counter()
        out = subprocess.run(["grep", "-cE", GREP_PATTERN, path], capture_output=True, text=True,
                             env=env)
        best = min(best, time.perf_counter() - start)
        count = int(out.stdout.strip() or 0)
    return best, count


def presidio_recognizers(entities):
    from presidio_analyzer.predefined_recognizers import (
        AbaRoutingRecognizer, CreditCardRecognizer, EmailRecognizer, IbanRecognizer,
        IpRecognizer, UsBankRecognizer, UsSsnRecognizer)
    if entities == "CREDIT_CARD":
        return [CreditCardRecognizer()]
    return [CreditCardRecognizer(), UsSsnRecognizer(), EmailRecognizer(), IbanRecognizer(),
            IpRecognizer(), UsBankRecognizer(), AbaRoutingRecognizer()]


def run_presidio(path, entities, limit_bytes):
    recognizers = presidio_recognizers(entities)
    with open(path, encoding="ascii") as f:
        text = f.read(limit_bytes) if limit_bytes else f.read()
    # Presidio analyzes one text at a time; feed it 1 MB pieces cut at line ends.
    pieces = []
    pos = 0
    while pos < len(text):
        end = text.find("\n", min(pos + 1_000_000, len(text)))
        end = len(text) if end < 0 else end + 1
        pieces.append((pos, text[pos:end]))
        pos = end
    findings = 0
    cards = set()
    start = time.perf_counter()
    for offset, piece in pieces:
        for rec in recognizers:
            for r in rec.analyze(piece, rec.supported_entities, None):
                findings += 1
                if r.entity_type == "CREDIT_CARD":
                    cards.add((offset + r.start, offset + r.end))
    return time.perf_counter() - start, findings, cards, len(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", default="1,100")
    ap.add_argument("--pan-every", type=int, default=50)
    ap.add_argument("--presidio-limit-mb", type=float, default=0)
    ap.add_argument("--no-presidio", action="store_true")
    ap.add_argument("--baseline", help="another corpus_scan binary to run side by side")
    args = ap.parse_args()
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
    print("building ztee-dlp (release)...", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ztee-dlp", "--example", "corpus_scan"],
                   check=True, cwd=root)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    binary = os.path.join(target, "release", "examples", "corpus_scan")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ztee-dlp-bench-") as tmp:
        for size_mb in [float(s) for s in args.sizes_mb.split(",")]:
            path = os.path.join(tmp, f"corpus-{size_mb:g}MB.log")
            print(f"generating {size_mb:g} MB corpus...", file=sys.stderr)
            spans = set(generate(path, int(size_mb * 1_000_000), args.pan_every))
            size = os.path.getsize(path)
            print(f"scanning {size_mb:g} MB: grep...", file=sys.stderr)
            gs, gf = run_grep(path)
            g_mbs = size / gs / 1e6
            rows.append((f"{size_mb:g} MB", "grep -cE", "grep", size, gs, g_mbs, f"{gf} lines",
                         0, 0, ""))
            engines = [("ztee", binary)] + ([("ztee (baseline)", args.baseline)] if args.baseline else [])
            for entities in ["CREDIT_CARD", "all"]:
                ztee_mbs = []
                for name, path_bin in engines:
                    print(f"scanning {size_mb:g} MB, {entities}: {name}...", file=sys.stderr)
                    zs, zf, zc = run_ztee(path_bin, path, entities)
                    z_mbs = size / zs / 1e6
                    ztee_mbs.append(z_mbs)
                    rows.append((f"{size_mb:g} MB", entities, name, size, zs, z_mbs, zf,
                                 len(zc & spans), len(spans), f"{z_mbs / g_mbs:.2f}x grep"))
                if args.no_presidio:
                    continue
                limit = int(args.presidio_limit_mb * 1_000_000) if args.presidio_limit_mb else 0
                print(f"scanning {size_mb:g} MB, {entities}: presidio...", file=sys.stderr)
                ps, pf, pc, pbytes = run_presidio(path, entities, limit)
                in_part = {s for s in spans if s[1] <= pbytes}
                z_mbs = ztee_mbs[0]
                p_mbs = pbytes / ps / 1e6
                rows.append((f"{size_mb:g} MB", entities, "presidio", pbytes, ps, p_mbs, pf,
                             len(pc & in_part), len(in_part), f"ztee {z_mbs / p_mbs:.0f}x"))
            for name, path_bin in engines:
                print(f"streaming {size_mb:g} MB: {name}...", file=sys.stderr)
                streamed = run_stream(path_bin, path)
                if streamed is None:
                    continue
                ss, sf = streamed
                s_mbs = size / ss / 1e6
                rows.append((f"{size_mb:g} MB", "all, stream 4 KiB", name, size, ss, s_mbs, sf,
                             0, 0, f"{s_mbs / g_mbs:.2f}x grep"))
    header = ("corpus", "entities", "engine", "bytes scanned", "seconds", "MB/s", "findings",
              "PAN recall", "ratio")
    table = [header] + [
        (c, e, eng, f"{b:,}", f"{s:.3f}", f"{m:.1f}", str(f),
         f"{hit}/{total} ({100 * hit / max(total, 1):.1f}%)" if total else "", r)
        for (c, e, eng, b, s, m, f, hit, total, r) in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


if __name__ == "__main__":
    main()
