//! Append throughput and latency with fsync, on the filesystem holding the target directory.
//!
//! `cargo bench -p ztee-audit` runs:
//! - `append/sequential`: one appender, each append waits for its own fsync;
//! - `append/concurrent/N`: N threads appending at once, sharing fsyncs (group commit);
//! - a latency table (p50/p99/max per append) for 1 and 16 concurrent appenders, printed at the
//!   end so both are measured side by side in one run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ztee_audit::{
    AuditConfig, AuditEvent, AuditLog, EventType, NodeKey, Outcome, Principal, PrincipalKind,
};

fn bench_dir() -> tempfile::TempDir {
    // Not /dev/shm: fsync must reach a real disk for the numbers to mean anything.
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap_or_else(|e| panic!("{e}"))
}

fn open(dir: &std::path::Path) -> AuditLog {
    let key = NodeKey::load_or_generate(dir).unwrap_or_else(|e| panic!("{e}"));
    AuditLog::open(AuditConfig::new(dir), key).unwrap_or_else(|e| panic!("{e}"))
}

fn event(n: u64) -> AuditEvent {
    let who = Principal::new(PrincipalKind::User, "alice@example.com", "acme")
        .unwrap_or_else(|e| panic!("{e}"));
    AuditEvent::new(EventType::SandboxExec, Outcome::Success, who)
        .with_origin_ip([10, 0, 0, 7].into())
        .with_resource(format!("sandbox/sbx_{n:08}"))
        .and_then(|e| e.with_request_id(format!("req-{n:012}")))
        .unwrap_or_else(|e| panic!("{e}"))
        .with_code(b"python3 -c 'print(42)'")
        .with_output(b"42\n")
}

/// Runs `total` appends spread over `threads` threads; returns each append's latency.
fn run_concurrent(log: &Arc<AuditLog>, threads: u64, total: u64) -> Vec<Duration> {
    let per_thread = total / threads;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = Arc::clone(log);
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(per_thread as usize);
                for i in 0..per_thread {
                    let start = Instant::now();
                    log.append_blocking(event(t * 1_000_000 + i))
                        .unwrap_or_else(|e| panic!("{e}"));
                    latencies.push(start.elapsed());
                }
                latencies
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect()
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    {
        let dir = bench_dir();
        let log = open(dir.path());
        let mut n = 0u64;
        group.bench_function("sequential", |b| {
            b.iter(|| {
                n += 1;
                log.append_blocking(event(n))
                    .unwrap_or_else(|e| panic!("{e}"))
            })
        });
    }
    for threads in [4u64, 16, 64] {
        let dir = bench_dir();
        let log = Arc::new(open(dir.path()));
        let batch = threads * 8;
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(
            BenchmarkId::new("concurrent", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iterations| {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        run_concurrent(&log, threads, batch);
                    }
                    start.elapsed()
                })
            },
        );
    }
    group.finish();

    println!("\nappend latency with fsync (one run, side by side)");
    println!(
        "{:>10} {:>10} {:>12} {:>12} {:>12} {:>14}",
        "appenders", "appends", "p50", "p99", "max", "appends/s"
    );
    for threads in [1u64, 16] {
        let dir = bench_dir();
        let log = Arc::new(open(dir.path()));
        let total = 800;
        let start = Instant::now();
        let mut latencies = run_concurrent(&log, threads, total);
        let elapsed = start.elapsed();
        latencies.sort_unstable();
        let pick =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        println!(
            "{:>10} {:>10} {:>12.2?} {:>12.2?} {:>12.2?} {:>14.0}",
            threads,
            latencies.len(),
            pick(0.50),
            pick(0.99),
            latencies[latencies.len() - 1],
            latencies.len() as f64 / elapsed.as_secs_f64()
        );
    }
}

criterion_group!(benches, append);
criterion_main!(benches);
