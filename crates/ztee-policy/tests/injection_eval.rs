//! The shipped detector on the committed evaluation sets (`data/injection/eval/`, described in
//! its README) must stay at or above the floors stated in `docs/policy.md`, section
//! "Training data and results". `garak.jsonl` is the held-out set: it played no part in training
//! or in writing the rules.

use std::path::PathBuf;

use ztee_policy::injection::eval::{evaluate, read_corpus};
use ztee_policy::injection::{Detector, THRESHOLD};

/// (file, minimum recall, maximum false-positive rate, minimum precision)
const FLOORS: &[(&str, f64, f64, f64)] = &[
    ("eval/garak.jsonl", 0.86, 0.035, 0.95),
    ("eval/spikee.jsonl", 0.99, 0.03, 0.99),
    ("eval/pyrit.jsonl", 0.89, 0.025, 0.85),
    ("eval/agentdojo.jsonl", 0.99, 0.01, 0.99),
    ("corpus.jsonl", 0.99, 0.015, 0.97),
];

#[test]
fn the_detector_meets_its_floors_on_every_committed_set() {
    let detector = Detector::builtin().expect("built-in detector");
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/injection");
    let mut failures = Vec::new();
    for &(file, min_recall, max_fpr, min_precision) in FLOORS {
        let samples = read_corpus(&data.join(file)).expect("committed corpus parses");
        let report = evaluate(detector, &samples, THRESHOLD);
        eprintln!(
            "{file}: precision {:.3} recall {:.3} FPR {:.3} ({} samples)",
            report.precision, report.recall, report.fpr, report.samples
        );
        if report.recall < min_recall || report.fpr > max_fpr || report.precision < min_precision {
            failures.push(format!(
                "{file}: precision {:.3} (floor {min_precision}), recall {:.3} (floor {min_recall}), FPR {:.3} (ceiling {max_fpr})",
                report.precision, report.recall, report.fpr
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "below the stated floors:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_held_out_set_has_both_classes() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/injection/eval/garak.jsonl");
    let samples = read_corpus(&data).expect("held-out corpus parses");
    let attacks = samples.iter().filter(|s| s.injection).count();
    assert!(
        attacks >= 600 && samples.len() - attacks >= 900,
        "{attacks} of {}",
        samples.len()
    );
}
