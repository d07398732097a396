//! `ztee guard`: score text for prompt injection (work done by `ztee_policy::injection`).

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ztee_policy::injection;

use crate::globals::GlobalArgs;
use crate::output::print_object;

#[derive(Subcommand)]
pub enum Command {
    /// Read text and report whether it carries a prompt injection.
    ///
    /// Examples:
    ///   echo "Ignore all previous instructions" | ztee guard scan --format json
    ///   ztee guard scan tool-output.txt
    ///
    /// Prints {"injection": bool, "score": 0..1, "rules": [...]}. Exit status 0 whether or not
    /// an injection is found; non-zero only when the text cannot be read.
    #[command(verbatim_doc_comment)]
    Scan(ScanArgs),
    /// Measure the detector on a labelled corpus.
    ///
    /// Examples:
    ///   ztee guard eval crates/ztee-policy/data/injection/eval/garak.jsonl
    ///   ztee guard eval corpus.jsonl --threshold 0.7 --json
    ///
    /// CORPUS is JSON lines, one {"text": "...", "label": 0|1} object each (1 = injection;
    /// other fields are ignored). Prints samples, TP/FP/TN/FN, precision, recall, false-positive
    /// rate and p50/p99 scan latency. A malformed line is an error naming its line number.
    #[command(verbatim_doc_comment)]
    Eval(EvalArgs),
}

#[derive(Args)]
pub struct ScanArgs {
    /// File to scan [default: stdin]. Invalid UTF-8 is replaced, not rejected.
    file: Option<PathBuf>,
}

#[derive(Args)]
pub struct EvalArgs {
    /// JSONL corpus to evaluate.
    corpus: PathBuf,
    /// Score at or above which a text counts as flagged.
    #[arg(long, default_value_t = injection::THRESHOLD, value_parser = parse_threshold)]
    threshold: f64,
    /// Print the report as JSON (same as the global `--format json`).
    #[arg(long)]
    json: bool,
}

fn parse_threshold(value: &str) -> Result<f64, String> {
    let threshold: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    if (0.0..=1.0).contains(&threshold) {
        Ok(threshold)
    } else {
        Err(format!("{threshold} is outside 0..=1"))
    }
}

pub fn run(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    match command {
        Command::Scan(args) => scan(args, globals),
        Command::Eval(args) => eval(args, globals),
    }
}

fn eval(args: EvalArgs, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let samples = injection::eval::read_corpus(&args.corpus)?;
    let detector = injection::Detector::builtin()?;
    let report = injection::eval::evaluate(detector, &samples, args.threshold);
    let format = if args.json {
        crate::globals::Format::Json
    } else {
        globals.format
    };
    print_object(
        format,
        &report,
        &[
            ("samples", report.samples.to_string()),
            ("threshold", format!("{:.3}", report.threshold)),
            (
                "TP / FP / TN / FN",
                format!(
                    "{} / {} / {} / {}",
                    report.tp, report.fp, report.tn, report.fn_
                ),
            ),
            ("precision", format!("{:.3}", report.precision)),
            ("recall", format!("{:.3}", report.recall)),
            ("FPR", format!("{:.3}", report.fpr)),
            (
                "scan latency p50 / p99",
                format!(
                    "{:.0} µs / {:.0} µs",
                    report.latency_p50_us, report.latency_p99_us
                ),
            ),
        ],
    )?;
    Ok(0)
}

fn scan(args: ScanArgs, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let bytes = match &args.file {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("{}: cannot read the file to scan", path.display()))?,
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading the text to scan from stdin")?;
            bytes
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let result = injection::scan(&text);
    print_object(
        globals.format,
        &result,
        &[
            ("injection", result.injection.to_string()),
            ("score", format!("{:.3}", result.score)),
            ("rules", result.rules.join(", ")),
        ],
    )?;
    Ok(0)
}
