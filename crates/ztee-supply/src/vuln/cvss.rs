//! CVSS v3.0/v3.1 base scores computed from vector strings, per the FIRST specification. The
//! admission gate is on these numbers, never on a vendor's severity label.

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BaseScore {
    pub score: f64,
    pub minor_version: u8,
}

/// The qualitative rating the specification attaches to a score.
pub fn rating(score: f64) -> &'static str {
    if score <= 0.0 {
        "NONE"
    } else if score < 4.0 {
        "LOW"
    } else if score < 7.0 {
        "MEDIUM"
    } else if score < 9.0 {
        "HIGH"
    } else {
        "CRITICAL"
    }
}

/// v3.1's Roundup: the smallest one-decimal number >= x, computed on integers so that
/// floating-point noise (e.g. 4.000000000000001) does not round up.
fn roundup_31(x: f64) -> f64 {
    let int_input = (x * 100_000.0).round() as i64;
    if int_input % 10_000 == 0 {
        int_input as f64 / 100_000.0
    } else {
        ((int_input / 10_000) + 1) as f64 / 10.0
    }
}

fn roundup_30(x: f64) -> f64 {
    (x * 10.0).ceil() / 10.0
}

/// Parses `CVSS:3.x/AV:../AC:../PR:../UI:../S:../C:../I:../A:..` (temporal and environmental
/// metrics may follow and are ignored) and computes the base score.
pub fn base_score(vector: &str) -> Result<BaseScore> {
    let bad = |reason: String| Error::invalid("CVSS vector", vector, reason);
    let mut parts = vector.trim().split('/');
    let minor_version = match parts.next() {
        Some("CVSS:3.1") => 1,
        Some("CVSS:3.0") => 0,
        _ => return Err(bad("must start with CVSS:3.0/ or CVSS:3.1/".into())),
    };
    let mut metrics = std::collections::HashMap::new();
    for part in parts {
        let (k, v) = part
            .split_once(':')
            .ok_or_else(|| bad(format!("{part:?} is not METRIC:VALUE")))?;
        if metrics.insert(k, v).is_some() {
            return Err(bad(format!("metric {k} appears twice")));
        }
    }
    let get = |k: &str| {
        metrics
            .get(k)
            .copied()
            .ok_or_else(|| bad(format!("base metric {k} is missing")))
    };
    let scope_changed = match get("S")? {
        "U" => false,
        "C" => true,
        other => return Err(bad(format!("S:{other} is not U or C"))),
    };
    let pick = |k: &str, table: &[(&str, f64)]| -> Result<f64> {
        let v = get(k)?;
        table
            .iter()
            .find(|(name, _)| *name == v)
            .map(|(_, w)| *w)
            .ok_or_else(|| bad(format!("{k}:{v} is not a valid value")))
    };
    let av = pick("AV", &[("N", 0.85), ("A", 0.62), ("L", 0.55), ("P", 0.2)])?;
    let ac = pick("AC", &[("L", 0.77), ("H", 0.44)])?;
    let pr = if scope_changed {
        pick("PR", &[("N", 0.85), ("L", 0.68), ("H", 0.5)])?
    } else {
        pick("PR", &[("N", 0.85), ("L", 0.62), ("H", 0.27)])?
    };
    let ui = pick("UI", &[("N", 0.85), ("R", 0.62)])?;
    let cia = [("H", 0.56), ("L", 0.22), ("N", 0.0)];
    let (c, i, a) = (pick("C", &cia)?, pick("I", &cia)?, pick("A", &cia)?);

    let iss = 1.0 - (1.0 - c) * (1.0 - i) * (1.0 - a);
    let impact = if scope_changed {
        7.52 * (iss - 0.029) - 3.25 * (iss - 0.02).powi(15)
    } else {
        6.42 * iss
    };
    let exploitability = 8.22 * av * ac * pr * ui;
    let roundup = if minor_version == 1 {
        roundup_31
    } else {
        roundup_30
    };
    let score = if impact <= 0.0 {
        0.0
    } else if scope_changed {
        roundup((1.08 * (impact + exploitability)).min(10.0))
    } else {
        roundup((impact + exploitability).min(10.0))
    };
    Ok(BaseScore {
        score,
        minor_version,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_the_first_calculator() {
        let cases = [
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),
            ("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N", 5.9),
            ("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", 7.8),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 6.1),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N", 7.5),
            ("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:N", 7.4),
            ("CVSS:3.1/AV:P/AC:H/PR:H/UI:R/S:U/C:N/I:N/A:N", 0.0),
            ("CVSS:3.0/AV:N/AC:L/PR:L/UI:N/S:C/C:L/I:L/A:N", 6.4),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/E:P/RL:O", 9.8),
        ];
        for (vector, want) in cases {
            let got = base_score(vector).unwrap().score;
            assert!(
                (got - want).abs() < 1e-9,
                "{vector}: got {got}, want {want}"
            );
        }
        assert_eq!(rating(9.8), "CRITICAL");
        assert_eq!(rating(7.0), "HIGH");
        assert_eq!(rating(6.9), "MEDIUM");
    }

    #[test]
    fn rejects_malformed_vectors() {
        for bad in [
            "AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
            "CVSS:2.0/AV:N",
            "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H",
            "CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
            "CVSS:3.1/AV:N/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
        ] {
            assert!(base_score(bad).is_err(), "{bad}");
        }
    }
}
