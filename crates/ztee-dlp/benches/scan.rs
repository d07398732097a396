//! `cargo bench -p ztee-dlp`: scanner and stream throughput on generated log-like text, with and
//! without embedded card numbers. The side-by-side comparison with Presidio is
//! `bench/presidio_compare.py`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ztee_dlp::{Entity, Operators, Scanner, ScannerConfig, StreamScanner};

/// Deterministic xorshift so every run scans the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn luhn_complete(body: &mut Vec<u8>) {
    body.push(0);
    for d in 0..10 {
        let last = body.len() - 1;
        body[last] = d;
        if ztee_dlp::luhn_valid(body) {
            return;
        }
    }
}

/// Log lines like a payment service writes; every `pan_every`-th line carries a card number
/// (0: none).
fn corpus(bytes: usize, pan_every: usize) -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let paths = [
        "/api/v1/orders",
        "/api/v1/refunds",
        "/healthz",
        "/api/v1/customers",
    ];
    let levels = ["INFO", "INFO", "INFO", "WARN", "DEBUG"];
    let mut out = String::with_capacity(bytes + 256);
    let mut line = 0usize;
    while out.len() < bytes {
        line += 1;
        let ms = rng.below(1000);
        out.push_str(&format!(
            "2024-03-{:02}T{:02}:{:02}:{:02}.{ms:03}Z {} [req-{:08x}] {} {}/{} status={} took={}ms user=u{} ip=10.{}.{}.{}",
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60),
            levels[rng.below(levels.len() as u64) as usize],
            rng.next() as u32,
            if rng.below(3) == 0 { "POST" } else { "GET" },
            paths[rng.below(paths.len() as u64) as usize],
            rng.below(100_000),
            [200, 201, 404, 500][rng.below(4) as usize],
            rng.below(900),
            rng.below(50_000),
            rng.below(256),
            rng.below(256),
            rng.below(256),
        ));
        if pan_every > 0 && line % pan_every == 0 {
            let mut pan = vec![4u8];
            pan.extend((0..14).map(|_| rng.below(10) as u8));
            luhn_complete(&mut pan);
            let digits: String = pan.iter().map(|d| char::from(b'0' + d)).collect();
            out.push_str(" card=");
            out.push_str(&digits);
        }
        out.push('\n');
    }
    out
}

/// One JSON customer record a line; every `pan_every`-th carries a card number.
fn json_records(bytes: usize, pan_every: usize) -> String {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let first = ["John", "Mary", "Ann", "Peter", "Li", "Jose", "Anna", "Omar"];
    let last = [
        "Smith", "Jones", "Garcia", "Lee", "O'Brien", "Schmidt", "Wei", "Khan",
    ];
    let streets = [
        "Main Street",
        "Oak Avenue",
        "Elm Rd",
        "Baker St",
        "Hill Road",
    ];
    let mut out = String::with_capacity(bytes + 256);
    let mut line = 0usize;
    while out.len() < bytes {
        line += 1;
        out.push_str(&format!(
            r#"{{"id":{},"name":"{} {}","address":"{} {}","city":"Springfield","zip":"{:05}","status":"active","hostname":"web-{}""#,
            rng.below(1_000_000),
            first[rng.below(first.len() as u64) as usize],
            last[rng.below(last.len() as u64) as usize],
            1 + rng.below(999),
            streets[rng.below(streets.len() as u64) as usize],
            rng.below(100_000),
            rng.below(100),
        ));
        if pan_every > 0 && line % pan_every == 0 {
            out.push_str(r#","card":"4111111111111111""#);
        }
        out.push_str("}\n");
    }
    out
}

fn bench_scan(c: &mut Criterion) {
    let all = Scanner::new(ScannerConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    let cards_only = Scanner::new(ScannerConfig {
        entities: vec![Entity::CreditCard],
        ..ScannerConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // Every entity but the cardholder name and postal address: the cost of those two, measured
    // in the same run (on the log corpora, on prose, and on JSON records full of the labels
    // they read: name, address, city, zip; every 50th with a card).
    let without_chd = Scanner::new(ScannerConfig {
        entities: Entity::ALL
            .iter()
            .copied()
            .filter(|e| !matches!(e, Entity::CardholderName | Entity::PostalAddress))
            .collect(),
        ..ScannerConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let clean = corpus(1 << 20, 0);
    let with_pans = corpus(1 << 20, 50);

    let mut group = c.benchmark_group("scan_1MiB");
    group.throughput(Throughput::Bytes(clean.len() as u64));
    group.bench_function("all_entities/clean", |b| {
        b.iter(|| all.scan(black_box(&clean)))
    });
    group.bench_function("all_entities/with_pans", |b| {
        b.iter(|| all.scan(black_box(&with_pans)))
    });
    group.bench_function("credit_card/clean", |b| {
        b.iter(|| cards_only.scan(black_box(&clean)))
    });
    group.bench_function("credit_card/with_pans", |b| {
        b.iter(|| cards_only.scan(black_box(&with_pans)))
    });
    let prose =
        "The quick brown fox jumps over the lazy dog while the agent summarizes the report. "
            .repeat((1 << 20) / 84);
    group.bench_function("all_entities/prose_no_digits", |b| {
        b.iter(|| all.scan(black_box(&prose)))
    });
    for (name, text) in [
        ("clean", &clean),
        ("with_pans", &with_pans),
        ("prose_no_digits", &prose),
    ] {
        group.bench_function(format!("all_but_name_address/{name}"), |b| {
            b.iter(|| without_chd.scan(black_box(text)))
        });
    }
    let labelled = json_records(1 << 20, 50);
    group.bench_function("all_entities/json_labels", |b| {
        b.iter(|| all.scan(black_box(&labelled)))
    });
    group.bench_function("all_but_name_address/json_labels", |b| {
        b.iter(|| without_chd.scan(black_box(&labelled)))
    });
    group.finish();

    let scanner = Arc::new(all);
    let mut group = c.benchmark_group("stream_1MiB");
    group.throughput(Throughput::Bytes(with_pans.len() as u64));
    group.bench_function("redact_4KiB_chunks", |b| {
        b.iter(|| {
            let mut s = StreamScanner::new(Arc::clone(&scanner), Operators::default());
            let mut n = 0;
            for chunk in with_pans.as_bytes().chunks(4096) {
                n += s.feed_bytes(chunk).map(|o| o.len()).unwrap_or(0);
            }
            n + s.finish().map(|o| o.len()).unwrap_or(0)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_scan
}
criterion_main!(benches);
