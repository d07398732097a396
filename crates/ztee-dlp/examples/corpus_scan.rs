//! Scans a corpus file and prints timing and card findings as JSON, for
//! `bench/presidio_compare.py` (which runs Presidio on the same file in the same run).
//!
//! Usage: corpus_scan FILE [ENTITIES] [REPEAT] [scan|stream]
//!
//! `stream` redacts the file through a `StreamScanner` in 4 KiB chunks, as sandbox output
//! arrives, and reports the best time and the number of redactions instead of card spans.

use std::sync::Arc;
use std::time::Instant;

use ztee_dlp::{Entity, Operators, Scanner, ScannerConfig, StreamScanner};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: corpus_scan FILE [ENTITIES|all] [REPEAT] [scan|stream]")?;
    let entities = match args.next().as_deref() {
        None | Some("all") => Vec::new(),
        Some(list) => Entity::parse_list(list)?,
    };
    let repeat: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(3);
    let stream = match args.next().as_deref() {
        None | Some("scan") => false,
        Some("stream") => true,
        Some(other) => return Err(format!("unknown mode {other}").into()),
    };
    let text = std::fs::read_to_string(&path)?;
    let scanner = Scanner::new(ScannerConfig {
        entities,
        ..ScannerConfig::default()
    })?;
    if stream {
        let scanner = Arc::new(scanner);
        let mut best = f64::MAX;
        let mut redacted = 0;
        for _ in 0..repeat.max(1) {
            let t = Instant::now();
            let mut s = StreamScanner::new(Arc::clone(&scanner), Operators::default());
            let mut out_bytes = 0;
            for chunk in text.as_bytes().chunks(4096) {
                out_bytes += s.feed_bytes(chunk)?.len();
            }
            out_bytes += s.finish()?.len();
            best = best.min(t.elapsed().as_secs_f64());
            redacted = s.counts().values().sum::<usize>();
            std::hint::black_box(out_bytes);
        }
        println!(
            "{}",
            serde_json::json!({"bytes": text.len(), "seconds": best, "findings": redacted})
        );
        return Ok(());
    }
    let mut best = f64::MAX;
    let mut findings = Vec::new();
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        findings = scanner.scan(&text);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let cards: Vec<(usize, usize)> = findings
        .iter()
        .filter(|f| f.entity_type == Entity::CreditCard)
        .map(|f| (f.start, f.end))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "bytes": text.len(),
            "seconds": best,
            "findings": findings.len(),
            "card_spans": cards,
        })
    );
    Ok(())
}
