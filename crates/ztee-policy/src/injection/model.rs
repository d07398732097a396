//! The statistical half of the detector: logistic regression over hashed word unigrams and
//! bigrams of the normalized text. Trained offline by `examples/train_injection.rs` on the
//! project's own labelled corpus and the public development sets (`data/injection/`, the
//! held-out set excepted), shipped as `model.bin`:
//!
//! ```text
//! "ZTIM0001"   8 bytes magic and version
//! buckets      u32 LE (a power of two)
//! bias         f32 LE
//! weights      buckets x f32 LE
//! ```

use crate::PolicyError;

const MAGIC: &[u8; 8] = b"ZTIM0001";

pub struct Model {
    bias: f32,
    weights: Vec<f32>,
}

impl Model {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PolicyError> {
        let bad = |reason: &str| PolicyError::Model {
            what: "weights file",
            reason: reason.to_string(),
        };
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| bad("wrong magic"))?;
        let (buckets, rest) = rest
            .split_at_checked(4)
            .ok_or_else(|| bad("truncated header"))?;
        let buckets = u32::from_le_bytes([buckets[0], buckets[1], buckets[2], buckets[3]]) as usize;
        if !buckets.is_power_of_two() {
            return Err(bad("bucket count is not a power of two"));
        }
        let (bias, rest) = rest
            .split_at_checked(4)
            .ok_or_else(|| bad("truncated header"))?;
        let bias = f32::from_le_bytes([bias[0], bias[1], bias[2], bias[3]]);
        if rest.len() != buckets * 4 {
            return Err(bad("weight count does not match the header"));
        }
        let weights = rest
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Model { bias, weights })
    }

    pub fn to_bytes(bias: f32, weights: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + weights.len() * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(weights.len() as u32).to_le_bytes());
        out.extend_from_slice(&bias.to_le_bytes());
        for w in weights {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    pub fn buckets(&self) -> usize {
        self.weights.len()
    }

    /// Probability that the text (given as its normalized views) is an injection.
    pub fn probability(&self, features: &Features) -> f64 {
        let mut z = self.bias;
        for &index in &features.indices {
            z += self.weights[index as usize & (self.weights.len() - 1)] * features.value;
        }
        1.0 / (1.0 + (-f64::from(z)).exp())
    }
}

/// The hashed feature vector of a text: distinct bucket indices, each with the same value
/// (1/sqrt(n), so long texts do not saturate the score).
pub struct Features {
    pub indices: Vec<u32>,
    pub value: f32,
}

/// Tokens are runs of ASCII letters and digits; features are unigrams and bigrams hashed with
/// FNV-1a into `buckets` (a power of two).
pub fn featurize<'a>(views: impl Iterator<Item = &'a str>, buckets: usize) -> Features {
    let mask = (buckets.max(1) - 1) as u32;
    let mut indices = Vec::with_capacity(256);
    for text in views {
        let mut previous: Option<&str> = None;
        for token in text
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|t| !t.is_empty() && t.len() <= 32)
        {
            indices.push(fnv1a(&[b"u:", token.as_bytes()]) & mask);
            if let Some(prev) = previous {
                indices.push(fnv1a(&[b"b:", prev.as_bytes(), b" ", token.as_bytes()]) & mask);
            }
            previous = Some(token);
        }
    }
    indices.sort_unstable();
    indices.dedup();
    let value = if indices.is_empty() {
        0.0
    } else {
        1.0 / (indices.len() as f32).sqrt()
    };
    Features { indices, value }
}

fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for part in parts {
        for byte in *part {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}
