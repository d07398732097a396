//! Trains the prompt-injection model and reports precision, recall and FPR per corpus.
//!
//! ```text
//! python3 data/injection/generate.py > data/injection/corpus.jsonl
//! cargo run --release -p ztee-policy --example train_injection -- \
//!     data/injection/corpus.jsonl src/injection/model.bin \
//!     --dev data/injection/eval/spikee.jsonl --dev data/injection/eval/pyrit.jsonl \
//!     --dev data/injection/eval/agentdojo.jsonl --held-out data/injection/eval/garak.jsonl --all
//! ```
//!
//! The project's corpus is split by template (`group`): whole templates are held out, so its test
//! split has phrasings the model never saw. Each `--dev` corpus is split by a hash of the text
//! (a quarter to test; a `group` field keeps all fillings of one template on one side).
//! `--held-out` corpora are only scored, never trained on. Settings are chosen on the splits;
//! the shipped model is then trained with `--all` (every sample of the project's corpus and of
//! the development corpora, so its split rows are training-set numbers). `--errors FILE` lists
//! the misclassified samples of the test splits (never of a held-out corpus). The weights are
//! written only after evaluation, to a temp file renamed into place.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use ztee_policy::injection::{featurize, normalize, Detector, Features, Model, THRESHOLD};

const BUCKETS: usize = 1 << 14;
/// Few passes: with more, the model learns the development templates' exact wording and
/// recalls less on the template-disjoint test splits (measured while choosing: 40 passes gave
/// 0.84-0.89 on spikee and pyrit, 5 passes 0.91-0.93).
const EPOCHS: usize = 5;
const LEARNING_RATE: f32 = 0.5;
const L2: f32 = 1e-5;

#[derive(Deserialize)]
struct Sample {
    text: String,
    label: u8,
    #[serde(default)]
    group: String,
    #[serde(default)]
    family: String,
    #[serde(default)]
    obfuscation: String,
}

fn fnv(text: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
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

fn load(path: &str) -> Result<Vec<Sample>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let sample: Sample =
            serde_json::from_str(line).map_err(|e| format!("{path} line {}: {e}", i + 1))?;
        samples.push(sample);
    }
    Ok(samples)
}

fn features(text: &str) -> Features {
    let n = normalize(text);
    featurize(n.views.iter().map(|v| v.text.as_str()), BUCKETS)
}

/// Scores one test set three ways and prints the table rows.
fn report(name: &str, test: &[&Sample], detector: &Detector, rules_only: &Detector) {
    let (mut model_counts, mut rule_counts, mut full_counts) =
        (Counts::default(), Counts::default(), Counts::default());
    for sample in test {
        let n = normalize(&sample.text);
        model_counts.add(detector.model_probability(&n) >= THRESHOLD, sample.label);
        rule_counts.add(rules_only.scan(&sample.text).injection, sample.label);
        full_counts.add(detector.scan(&sample.text).injection, sample.label);
    }
    println!("{}", rule_counts.row(&format!("{name}: rules only")));
    println!("{}", model_counts.row(&format!("{name}: model only")));
    println!("{}", full_counts.row(&format!("{name}: rules + model")));
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(corpus), Some(out)) = (args.first(), args.get(1)) else {
        return Err(
            "usage: train_injection CORPUS.jsonl OUT_MODEL.bin [--dev FILE]... [--held-out FILE]... [--all] [--errors FILE]"
                .into(),
        );
    };
    let (mut dev_paths, mut held_out_paths) = (Vec::new(), Vec::new());
    let mut all = false;
    let mut errors: Option<String> = None;
    let mut rest = args[2..].iter();
    while let Some(flag) = rest.next() {
        if flag == "--all" {
            all = true;
            continue;
        }
        let value = rest.next().ok_or(format!("{flag} needs a file"))?;
        match flag.as_str() {
            "--dev" => dev_paths.push(value.clone()),
            "--held-out" => held_out_paths.push(value.clone()),
            "--errors" => errors = Some(value.clone()),
            other => return Err(format!("unknown option {other}").into()),
        }
    }

    let own = load(corpus)?;
    let (own_test, own_train): (Vec<&Sample>, Vec<&Sample>) =
        own.iter().partition(|s| fnv(&s.group) % 4 == 0);
    // `--all` trains the shipped model on every development sample once the settings are
    // chosen on the splits; the per-split numbers it prints are then training-set numbers.
    let everything = all;
    let mut train: Vec<&Sample> = if everything {
        own.iter().collect()
    } else {
        own_train
    };
    let mut dev_sets = Vec::new();
    for path in &dev_paths {
        dev_sets.push((path.clone(), load(path)?));
    }
    let mut dev_tests: Vec<(String, Vec<&Sample>)> = Vec::new();
    for (path, samples) in &dev_sets {
        let (test, dev_train): (Vec<&Sample>, Vec<&Sample>) = samples.iter().partition(|s| {
            fnv(if s.group.is_empty() {
                &s.text
            } else {
                &s.group
            }) % 4
                == 0
        });
        if everything {
            train.extend(samples.iter());
        } else {
            train.extend(dev_train);
        }
        dev_tests.push((path.clone(), test));
    }
    let held_out = held_out_paths
        .iter()
        .map(|p| load(p).map(|s| (p.clone(), s)))
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!("train {} samples", train.len());

    // Positives and negatives weigh the same in total, so that a dev corpus made mostly of
    // attacks does not shift the bias.
    let positives = train.iter().filter(|s| s.label == 1).count().max(1) as f32;
    let negatives = train.iter().filter(|s| s.label == 0).count().max(1) as f32;
    let total = positives + negatives;
    let class_weight = |label: u8| {
        if label == 1 {
            total / (2.0 * positives)
        } else {
            total / (2.0 * negatives)
        }
    };
    let featurized: Vec<(Features, &Sample)> =
        train.iter().map(|s| (features(&s.text), *s)).collect();

    // Logistic regression, plain SGD with a fixed, deterministic shuffle.
    let mut weights = vec![0f32; BUCKETS];
    let mut bias = 0f32;
    let mut order: Vec<usize> = (0..featurized.len()).collect();
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
            let (features, sample) = &featurized[i];
            let z = bias
                + features
                    .indices
                    .iter()
                    .map(|&j| weights[j as usize])
                    .sum::<f32>()
                    * features.value;
            let p = 1.0 / (1.0 + (-z).exp());
            let gradient = (p - f32::from(sample.label)) * class_weight(sample.label);
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

    println!("| corpus: detector | precision | recall | FPR | TP | FP | TN | FN |");
    println!("|---|---|---|---|---|---|---|---|");
    report(
        "own (held-out templates)",
        &own_test,
        &detector,
        &rules_only,
    );
    for (path, test) in &dev_tests {
        report(
            &format!("{path} (test quarter)"),
            test,
            &detector,
            &rules_only,
        );
    }
    if let Some(errors) = &errors {
        // Misclassified development samples, for reading; the held-out corpora are never listed.
        let mut lines = Vec::new();
        let own_entry = (corpus.clone(), own_test.clone());
        for (path, test) in std::iter::once(&own_entry).chain(&dev_tests) {
            for sample in test {
                let scan = detector.scan(&sample.text);
                if scan.injection != (sample.label == 1) {
                    let line = serde_json::json!({"corpus": path, "label": sample.label, "score": scan.score, "rules": scan.rules, "text": sample.text.chars().take(400).collect::<String>()});
                    lines.push(line.to_string());
                }
            }
        }
        std::fs::write(errors, lines.join("\n"))?;
    }
    for (path, samples) in &held_out {
        let all: Vec<&Sample> = samples.iter().collect();
        report(&format!("{path} (held out)"), &all, &detector, &rules_only);
    }

    let mut by_obfuscation: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    let mut benign: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for sample in &own_test {
        let flagged = detector.scan(&sample.text).injection;
        let entry = if sample.label == 1 {
            by_obfuscation
                .entry(sample.obfuscation.as_str())
                .or_default()
        } else {
            benign.entry(sample.family.as_str()).or_default()
        };
        entry.0 += u32::from(flagged);
        entry.1 += 1;
    }
    println!();
    println!("| own corpus, obfuscation | recall (rules + model) | samples |");
    println!("|---|---|---|");
    for (how, (hit, total)) in by_obfuscation {
        println!(
            "| {how} | {:.3} | {total} |",
            f64::from(hit) / f64::from(total.max(1))
        );
    }
    println!();
    println!("| own corpus, benign set | FPR (rules + model) | samples |");
    println!("|---|---|---|");
    for (family, (flagged, total)) in benign {
        println!(
            "| {family} | {:.3} | {total} |",
            f64::from(flagged) / f64::from(total.max(1))
        );
    }

    let out = PathBuf::from(out);
    let tmp = out.with_extension("bin.tmp");
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, &out)?;
    eprintln!("wrote {} ({} bytes)", out.display(), bytes.len());
    Ok(())
}
