//! Trains the prompt-injection model and reports held-out precision and recall.
//!
//! ```text
//! python3 data/injection/generate.py > data/injection/corpus.jsonl
//! cargo run --release -p ztee-policy --example train_injection -- \
//!     data/injection/corpus.jsonl src/injection/model.bin
//! ```
//!
//! Whole templates (`group`) are held out, so the test split contains phrasings the model never
//! saw. The weights are written only after evaluation, to a temp file renamed into place.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use ztee_policy::injection::{featurize, normalize, Detector, Features, Model, THRESHOLD};

const BUCKETS: usize = 1 << 14;
const EPOCHS: usize = 40;
const LEARNING_RATE: f32 = 0.5;
const L2: f32 = 1e-5;

#[derive(Deserialize)]
struct Sample {
    text: String,
    label: u8,
    group: String,
    family: String,
    obfuscation: String,
}

fn held_out(group: &str) -> bool {
    // FNV-1a of the group name: a stable ~25% of templates go to the test split.
    let mut h: u32 = 0x811c_9dc5;
    for b in group.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % 4 == 0
}

#[derive(Default)]
struct Counts {
    tp: u32,
    fp: u32,
    tn: u32,
    fn_: u32,
}

impl Counts {
    fn add(&mut self, predicted: bool, label: u8) {
        match (predicted, label == 1) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, false) => self.tn += 1,
            (false, true) => self.fn_ += 1,
        }
    }
    fn row(&self, name: &str) -> String {
        let p = f64::from(self.tp) / f64::from((self.tp + self.fp).max(1));
        let r = f64::from(self.tp) / f64::from((self.tp + self.fn_).max(1));
        let fpr = f64::from(self.fp) / f64::from((self.fp + self.tn).max(1));
        format!(
            "| {name} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} |",
            p, r, fpr, self.tp, self.fp, self.tn, self.fn_
        )
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(corpus), Some(out)) = (args.get(1), args.get(2)) else {
        return Err("usage: train_injection CORPUS.jsonl OUT_MODEL.bin".into());
    };
    let text = std::fs::read_to_string(corpus)?;
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let sample: Sample =
            serde_json::from_str(line).map_err(|e| format!("{corpus} line {}: {e}", i + 1))?;
        samples.push(sample);
    }
    let featurized: Vec<(Features, &Sample)> = samples
        .iter()
        .map(|s| {
            let n = normalize(&s.text);
            (
                featurize(n.views.iter().map(|v| v.text.as_str()), BUCKETS),
                s,
            )
        })
        .collect();
    let (test, train): (Vec<_>, Vec<_>) = featurized.iter().partition(|(_, s)| held_out(&s.group));
    eprintln!("train {} samples, test {} samples", train.len(), test.len());

    // Logistic regression, plain SGD with a fixed, deterministic shuffle.
    let mut weights = vec![0f32; BUCKETS];
    let mut bias = 0f32;
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut seed: u64 = 0x2026_1129;
    for epoch in 0..EPOCHS {
        for i in (1..order.len()).rev() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            order.swap(i, (seed >> 33) as usize % (i + 1));
        }
        let lr = LEARNING_RATE / (1.0 + epoch as f32 * 0.1);
        for &i in &order {
            let (features, sample) = &train[i];
            let z = bias
                + features
                    .indices
                    .iter()
                    .map(|&j| weights[j as usize])
                    .sum::<f32>()
                    * features.value;
            let p = 1.0 / (1.0 + (-z).exp());
            let gradient = p - f32::from(sample.label);
            for &j in &features.indices {
                let w = &mut weights[j as usize];
                *w -= lr * (gradient * features.value + L2 * *w);
            }
            bias -= lr * gradient;
        }
    }
    let bytes = Model::to_bytes(bias, &weights);
    let detector = Detector::new(Model::from_bytes(&bytes)?)?;
    let rules_only = Detector::new(Model::from_bytes(&Model::to_bytes(
        -30.0,
        &vec![0f32; BUCKETS],
    ))?)?;

    let (mut model_counts, mut rule_counts, mut full_counts) =
        (Counts::default(), Counts::default(), Counts::default());
    let mut by_obfuscation: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    // Benign family -> (flagged by the model alone, flagged by the shipped detector, total).
    let mut benign: BTreeMap<&str, (u32, u32, u32)> = BTreeMap::new();
    for (_, sample) in &test {
        let n = normalize(&sample.text);
        let model_flag = detector.model_probability(&n) >= THRESHOLD;
        model_counts.add(model_flag, sample.label);
        rule_counts.add(rules_only.scan(&sample.text).injection, sample.label);
        let full = detector.scan(&sample.text).injection;
        full_counts.add(full, sample.label);
        if sample.label == 0 {
            let entry = benign.entry(sample.family.as_str()).or_default();
            entry.0 += u32::from(model_flag);
            entry.1 += u32::from(full);
            entry.2 += 1;
        }
        if sample.label == 1 {
            let entry = by_obfuscation
                .entry(sample.obfuscation.as_str())
                .or_default();
            entry.1 += 1;
            if full {
                entry.0 += 1;
            }
        }
    }
    println!("| detector | precision | recall | FPR (benign) | TP | FP | TN | FN |");
    println!("|---|---|---|---|---|---|---|---|");
    println!("{}", rule_counts.row("rules only"));
    println!("{}", model_counts.row("model only"));
    println!("{}", full_counts.row("rules + model (shipped)"));
    println!();
    println!("| obfuscation | recall (rules + model) | samples |");
    println!("|---|---|---|");
    for (how, (hit, total)) in by_obfuscation {
        println!(
            "| {how} | {:.3} | {total} |",
            f64::from(hit) / f64::from(total.max(1))
        );
    }

    println!();
    println!("| benign set | FPR model only | FPR rules + model | samples |");
    println!("|---|---|---|---|");
    for (family, (model, full, total)) in benign {
        let total_f = f64::from(total.max(1));
        println!(
            "| {family} | {:.3} | {:.3} | {total} |",
            f64::from(model) / total_f,
            f64::from(full) / total_f
        );
    }

    let out = PathBuf::from(out);
    let tmp = out.with_extension("bin.tmp");
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, &out)?;
    eprintln!("wrote {} ({} bytes)", out.display(), bytes.len());
    Ok(())
}
