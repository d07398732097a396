//! `ztee bench`: how fast sandboxes start and answer on this host, measured side by side in one
//! run and reported with ratios to a cold boot (absolute times drift on shared machines).

use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use serde::Serialize;
use ztee_vm::{Engine, EngineConfig, ExecEvent, ExecSpec, SandboxSpec};

use crate::globals::{Format, GlobalArgs};

/// Measure cold boots, snapshot restores, warm-pool leases, exec round trips, concurrent
/// creates and idle density.
///
/// Examples:
///   ztee bench                 # the full run (several minutes under TCG)
///   ztee bench --quick         # fewer samples, for a smoke check
///   ztee bench --format json   # machine-readable
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Fewer samples: quick to run, noisier.
    #[arg(long)]
    pub quick: bool,

    /// How many idle sandboxes to hold at once for the density measurement (0 skips it).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub density: usize,
}

#[derive(Serialize)]
struct Row {
    what: String,
    samples: usize,
    median_ms: f64,
    p95_ms: f64,
    min_ms: f64,
    max_ms: f64,
    /// Cold boot median divided by this median.
    speedup_vs_cold_boot: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    accelerator: String,
    rows: Vec<Row>,
    density: Option<Density>,
}

#[derive(Serialize)]
struct Density {
    idle_sandboxes: usize,
    host_memory_used_mib: f64,
    host_memory_per_sandbox_mib: f64,
    guest_memory_mib: u32,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn row(what: &str, mut samples: Vec<f64>) -> Row {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Row {
        what: what.to_string(),
        samples: samples.len(),
        median_ms: at(0.5),
        p95_ms: at(0.95),
        min_ms: samples[0],
        max_ms: samples[samples.len() - 1],
        speedup_vs_cold_boot: None,
    }
}

pub fn run(args: Args, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let (boots, runs, restores, leases, execs, concurrent) = if args.quick {
        (3, 3, 5, 20, 50, 5)
    } else {
        (10, 10, 20, 200, 200, 20)
    };
    let exe = std::env::current_exe().context("cannot find the ztee executable")?;
    // Multi-threaded: the pool refills while leases are measured.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let config = crate::vm::engine_config(globals, &globals.data_dir)?;
        let engine = Engine::new(config.clone())?;
        let cold_engine = Engine::new(EngineConfig {
            snapshots: false,
            ..config
        })?;
        let accelerator = engine.accelerator().await.accelerator.to_string();
        let spec = SandboxSpec::default();
        let progress = |what: &str| eprintln!("bench: {what}");
        let mut rows = Vec::new();

        progress("cold boot: kernel to leased agent");
        let mut samples = Vec::new();
        for _ in 0..boots {
            let started = Instant::now();
            let sandbox = cold_engine.create(spec.clone()).await?;
            samples.push(ms(started.elapsed()));
            sandbox.destroy().await?;
        }
        rows.push(row("cold boot -> agent ready", samples));

        progress("`ztee run -- true`, end to end, booting from the kernel");
        rows.push(row(
            "`ztee run -- true` (cold boot)",
            time_cli(&exe, globals, runs, false)?,
        ));
        progress("`ztee run -- true`, end to end, restoring the snapshot");
        rows.push(row(
            "`ztee run -- true` (snapshot)",
            time_cli(&exe, globals, runs, true)?,
        ));

        progress("snapshot restore -> agent ready");
        // The first create makes the snapshot if it does not exist yet.
        engine.create(spec.clone()).await?.destroy().await?;
        let mut samples = Vec::new();
        for _ in 0..restores {
            let started = Instant::now();
            let sandbox = engine.create(spec.clone()).await?;
            samples.push(ms(started.elapsed()));
            sandbox.destroy().await?;
        }
        rows.push(row("snapshot restore -> agent ready", samples));

        progress("exec round trip on a live sandbox");
        let sandbox = engine.create(spec.clone()).await?;
        let mut samples = Vec::new();
        for _ in 0..execs {
            let started = Instant::now();
            let out = sandbox
                .exec(ExecSpec::new(vec!["true".into()]))
                .await?
                .output()
                .await?;
            samples.push(ms(started.elapsed()));
            if out.status.shell_code() != 0 {
                bail!("`true` failed in the sandbox");
            }
        }
        rows.push(row("exec `true` round trip", samples));
        let mut samples = Vec::new();
        for _ in 0..execs {
            let started = Instant::now();
            sandbox.ping().await?;
            samples.push(ms(started.elapsed()));
        }
        rows.push(row("agent ping round trip", samples));
        sandbox.destroy().await?;

        progress("warm pool lease -> first byte of `echo hi`");
        let pool_spec = SandboxSpec {
            max_processes: 255,
            ..spec.clone()
        };
        let pool = engine.start_pool(pool_spec.clone(), 4)?;
        pool.wait_ready(4, Duration::from_secs(120)).await;
        let mut samples = Vec::new();
        for _ in 0..leases {
            // Measure leases from a warm pool, as a server sees them between bursts.
            pool.wait_ready(1, Duration::from_secs(30)).await;
            let started = Instant::now();
            let sandbox = engine.create(pool_spec.clone()).await?;
            let mut execution = sandbox
                .exec(ExecSpec::new(vec!["echo".into(), "hi".into()]))
                .await?;
            loop {
                match execution.next_event().await? {
                    Some(ExecEvent::Stdout(_)) | Some(ExecEvent::Exit(_)) | None => break,
                    Some(ExecEvent::Stderr(_)) => {}
                }
            }
            samples.push(ms(started.elapsed()));
            drop(execution);
            sandbox.destroy().await?;
        }
        pool.resize(0);
        rows.push(row("pool lease -> first byte of `echo hi`", samples));

        progress(&format!(
            "{concurrent} concurrent creates (snapshot restores)"
        ));
        let tasks: Vec<_> = (0..concurrent)
            .map(|_| {
                let engine = engine.clone();
                let spec = spec.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let sandbox = engine.create(spec).await?;
                    let took = ms(started.elapsed());
                    Ok::<_, ztee_vm::VmError>((sandbox, took))
                })
            })
            .collect();
        let mut held = Vec::new();
        let mut samples = Vec::new();
        for task in tasks {
            let (sandbox, took) = task.await??;
            samples.push(took);
            held.push(sandbox);
        }
        for sandbox in held {
            sandbox.destroy().await?;
        }
        rows.push(row(&format!("{concurrent} concurrent creates"), samples));

        let density = if args.density > 0 {
            progress(&format!("density: holding {} idle sandboxes", args.density));
            Some(density(&engine, args.density).await?)
        } else {
            None
        };

        let cold = rows[0].median_ms;
        for row in rows.iter_mut().skip(1) {
            row.speedup_vs_cold_boot = Some(cold / row.median_ms);
        }
        Ok::<_, anyhow::Error>(Report {
            accelerator,
            rows,
            density,
        })
    })?;
    print(globals.format, &report)?;
    Ok(0)
}

/// Times `ztee run -- true` as a separate process, the way a user runs it.
fn time_cli(
    exe: &std::path::Path,
    globals: &GlobalArgs,
    runs: usize,
    snapshots: bool,
) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let status = Process::new(exe)
            .arg("--data-dir")
            .arg(&globals.data_dir)
            .args(["run", "--", "true"])
            .env("ZTEE_SNAPSHOTS", if snapshots { "1" } else { "0" })
            .stdin(Stdio::null())
            .status()
            .context("cannot run ztee")?;
        samples.push(ms(started.elapsed()));
        if !status.success() {
            bail!("`ztee run -- true` failed: {status}");
        }
    }
    Ok(samples)
}

async fn density(engine: &Engine, count: usize) -> anyhow::Result<Density> {
    let spec = SandboxSpec::default();
    // Make sure the snapshot exists before the baseline, so it is not counted.
    engine.create(spec.clone()).await?.destroy().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = used_mib()?;
    let mut held = Vec::new();
    for i in 0..count {
        match engine.create(spec.clone()).await {
            Ok(sandbox) => held.push(sandbox),
            Err(err) => {
                eprintln!("bench: density stopped at {i} sandboxes: {err}");
                break;
            }
        }
    }
    // Let them settle into idle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for sandbox in &held {
        sandbox.ping().await?;
    }
    let after = used_mib()?;
    let idle = held.len();
    for sandbox in held {
        sandbox.destroy().await?;
    }
    Ok(Density {
        idle_sandboxes: idle,
        host_memory_used_mib: after - before,
        host_memory_per_sandbox_mib: (after - before) / idle.max(1) as f64,
        guest_memory_mib: spec.memory_mib,
    })
}

/// Host memory in use (total minus available), in MiB.
fn used_mib() -> anyhow::Result<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| -> anyhow::Result<f64> {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .with_context(|| format!("{name} missing from /proc/meminfo"))
    };
    Ok(field("MemTotal:")? - field("MemAvailable:")?)
}

fn print(format: Format, report: &Report) -> anyhow::Result<()> {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "measurement",
        "n",
        "median ms",
        "p95 ms",
        "min ms",
        "max ms",
        "vs cold boot",
    ]);
    for row in &report.rows {
        table.add_row(vec![
            Cell::new(&row.what),
            Cell::new(row.samples).set_alignment(CellAlignment::Right),
            Cell::new(format!("{:.1}", row.median_ms)).set_alignment(CellAlignment::Right),
            Cell::new(format!("{:.1}", row.p95_ms)).set_alignment(CellAlignment::Right),
            Cell::new(format!("{:.1}", row.min_ms)).set_alignment(CellAlignment::Right),
            Cell::new(format!("{:.1}", row.max_ms)).set_alignment(CellAlignment::Right),
            Cell::new(
                row.speedup_vs_cold_boot
                    .map(|r| format!("{r:.1}x faster"))
                    .unwrap_or_else(|| "baseline".into()),
            )
            .set_alignment(CellAlignment::Right),
        ]);
    }
    println!("accelerator: {}", report.accelerator);
    println!("{table}");
    if let Some(d) = &report.density {
        println!(
            "density: {} idle sandboxes ({} MiB guest memory each) held at once; host memory used {:.0} MiB, {:.1} MiB per sandbox",
            d.idle_sandboxes, d.guest_memory_mib, d.host_memory_used_mib, d.host_memory_per_sandbox_mib
        );
    }
    Ok(())
}
