//! Scans a corpus file and prints timing and card findings as JSON, for
//! `bench/presidio_compare.py` (which runs Presidio on the same file in the same run).
//!
//! Usage: corpus_scan FILE [ENTITIES] [REPEAT]

use std::time::Instant;

use ztee_dlp::{Entity, Scanner, ScannerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: corpus_scan FILE [ENTITIES|all] [REPEAT]")?;
    let entities = match args.next().as_deref() {
        None | Some("all") => Vec::new(),
        Some(list) => Entity::parse_list(list)?,
    };
    let repeat: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(3);
    let text = std::fs::read_to_string(&path)?;
    let scanner = Scanner::new(ScannerConfig {
        entities,
        ..ScannerConfig::default()
    })?;
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
