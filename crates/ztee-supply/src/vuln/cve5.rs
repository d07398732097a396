//! CVE JSON 5 records as the CVE program publishes them (cvelistV5): the CVSS metrics of the CNA
//! container and of every ADP container (CISA's "Vulnrichment" among them). Debian's OSV records
//! carry no vectors; these are where a Debian finding's score comes from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::vuln::cvss;

/// Where a finding's score came from: the OSV record itself, the CVE record's CNA container, one
/// of its ADP containers (named by the provider's short name), or nowhere.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ScoreSource {
    Osv,
    CveCna,
    CveAdp(String),
    #[default]
    None,
}

impl fmt::Display for ScoreSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScoreSource::Osv => f.write_str("osv"),
            ScoreSource::CveCna => f.write_str("cve:cna"),
            ScoreSource::CveAdp(provider) => write!(f, "cve:adp:{provider}"),
            ScoreSource::None => f.write_str("none"),
        }
    }
}

impl FromStr for ScoreSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "osv" => Ok(ScoreSource::Osv),
            "cve:cna" => Ok(ScoreSource::CveCna),
            "none" => Ok(ScoreSource::None),
            other => match other.strip_prefix("cve:adp:") {
                Some(provider) if !provider.is_empty() => {
                    Ok(ScoreSource::CveAdp(provider.to_string()))
                }
                _ => Err(format!(
                    "score source {other:?} is not osv, cve:cna, cve:adp:<provider> or none"
                )),
            },
        }
    }
}

impl From<ScoreSource> for String {
    fn from(s: ScoreSource) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for ScoreSource {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// One CVSS metric of a container, with the base score ztee gates on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// `3.1`, `3.0` or `4.0`.
    pub version: String,
    pub vector: String,
    /// Computed from the vector for v3.x; for v4.0 the record's `baseScore` (checked to be a
    /// number from 0 to 10), since ztee does not implement the v4.0 scoring tables.
    pub score: f64,
}

/// What ztee keeps of one CVE record: its id, when it last changed, and the best metric of each
/// container that has one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CveScores {
    pub id: String,
    pub updated: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cna: Option<Metric>,
    /// `(provider short name, metric)` per ADP container that has a CVSS metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adp: Vec<(String, Metric)>,
}

impl CveScores {
    /// The score to use: the CNA's if it gave one, else the first ADP container's that did.
    pub fn best(&self) -> Option<(ScoreSource, &Metric)> {
        if let Some(m) = &self.cna {
            return Some((ScoreSource::CveCna, m));
        }
        self.adp
            .first()
            .map(|(provider, m)| (ScoreSource::CveAdp(provider.clone()), m))
    }

    pub fn has_metrics(&self) -> bool {
        self.cna.is_some() || !self.adp.is_empty()
    }
}

/// Whether a JSON document is a CVE JSON 5 record.
pub fn is_cve_record(value: &serde_json::Value) -> bool {
    value.get("dataType").and_then(|v| v.as_str()) == Some("CVE_RECORD")
}

#[derive(Deserialize)]
struct Record {
    #[serde(rename = "cveMetadata")]
    meta: Meta,
    #[serde(default)]
    containers: Containers,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "cveId")]
    cve_id: String,
    state: String,
    #[serde(rename = "dateUpdated", default)]
    date_updated: Option<String>,
}

#[derive(Default, Deserialize)]
struct Containers {
    #[serde(default)]
    cna: Option<Container>,
    #[serde(default)]
    adp: Vec<Container>,
}

#[derive(Deserialize)]
struct Container {
    #[serde(rename = "providerMetadata", default)]
    provider: Option<Provider>,
    #[serde(default)]
    metrics: Vec<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct Provider {
    #[serde(rename = "shortName", default)]
    short_name: Option<String>,
    #[serde(rename = "orgId", default)]
    org_id: Option<String>,
}

/// The parsed record: `None` for a REJECTED record (it has no metrics and replaces what was
/// known about that id). Errors name the record and the field, e.g.
/// `CVE-2023-4911: containers.cna.metrics[1].cvssV3_1.vectorString: ...`.
pub fn parse(value: serde_json::Value) -> Result<(String, Option<CveScores>), String> {
    let id_hint = value
        .pointer("/cveMetadata/cveId")
        .and_then(|v| v.as_str())
        .unwrap_or("(no cveMetadata.cveId)")
        .to_string();
    let record: Record = serde_path_to_error::deserialize(value)
        .map_err(|e| format!("{id_hint}: {}: {}", e.path(), e.inner()))?;
    let id = record.meta.cve_id;
    if !id.starts_with("CVE-") {
        return Err(format!(
            "{id}: cveMetadata.cveId: not a CVE id (CVE-YYYY-NNNN)"
        ));
    }
    match record.meta.state.as_str() {
        "PUBLISHED" => {}
        "REJECTED" => return Ok((id, None)),
        other => {
            return Err(format!(
                "{id}: cveMetadata.state: {other:?} is not PUBLISHED or REJECTED"
            ))
        }
    }
    let cna = match &record.containers.cna {
        Some(c) => best_metric(&id, "containers.cna", c)?,
        None => None,
    };
    let mut adp = Vec::new();
    for (i, container) in record.containers.adp.iter().enumerate() {
        if let Some(m) = best_metric(&id, &format!("containers.adp[{i}]"), container)? {
            let provider = container
                .provider
                .as_ref()
                .and_then(|p| p.short_name.clone().or(p.org_id.clone()))
                .ok_or_else(|| {
                    format!("{id}: containers.adp[{i}].providerMetadata: has metrics but no shortName or orgId")
                })?;
            adp.push((provider, m));
        }
    }
    Ok((
        id.clone(),
        Some(CveScores {
            id,
            updated: record.meta.date_updated.unwrap_or_default(),
            cna,
            adp,
        }),
    ))
}

/// The metric keys in order of preference within one container.
const PREFERENCE: &[(&str, &str)] = &[
    ("cvssV3_1", "3.1"),
    ("cvssV4_0", "4.0"),
    ("cvssV3_0", "3.0"),
];

fn best_metric(id: &str, at: &str, container: &Container) -> Result<Option<Metric>, String> {
    let mut found: Vec<(usize, Metric)> = Vec::new();
    for (i, metric) in container.metrics.iter().enumerate() {
        for (rank, (key, version)) in PREFERENCE.iter().enumerate() {
            let Some(body) = metric.get(*key) else {
                continue;
            };
            let field = format!("{at}.metrics[{i}].{key}");
            let vector = body
                .get("vectorString")
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("{id}: {field}.vectorString: missing or not a string"))?
                .trim()
                .to_string();
            let score = if *version == "4.0" {
                if !vector.starts_with("CVSS:4.0/") {
                    return Err(format!(
                        "{id}: {field}.vectorString: {vector:?} does not start with CVSS:4.0/"
                    ));
                }
                body.get("baseScore")
                    .and_then(|v| v.as_f64())
                    .filter(|s| (0.0..=10.0).contains(s))
                    .ok_or_else(|| {
                        format!("{id}: {field}.baseScore: missing or not a number from 0 to 10")
                    })?
            } else {
                cvss::base_score(&vector)
                    .map_err(|e| format!("{id}: {field}.vectorString: {e}"))?
                    .score
            };
            found.push((
                rank,
                Metric {
                    version: version.to_string(),
                    vector,
                    score,
                },
            ));
        }
    }
    found.sort_by_key(|(rank, _)| *rank);
    Ok(found.into_iter().next().map(|(_, m)| m))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(cna_metrics: serde_json::Value, adp: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "dataType": "CVE_RECORD", "dataVersion": "5.1",
            "cveMetadata": {"cveId": "CVE-2024-0001", "state": "PUBLISHED", "dateUpdated": "2024-01-01T00:00:00Z"},
            "containers": {"cna": {"providerMetadata": {"orgId": "x", "shortName": "vendor"}, "metrics": cna_metrics}, "adp": adp}
        })
    }

    #[test]
    fn prefers_the_cna_then_v31_then_v40_then_v30() {
        let v30 = serde_json::json!({"cvssV3_0": {"vectorString": "CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N", "baseScore": 7.5}});
        let v40 = serde_json::json!({"cvssV4_0": {"vectorString": "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N", "baseScore": 9.3}});
        let v31 = serde_json::json!({"cvssV3_1": {"vectorString": "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", "baseScore": 7.8}});
        let adp = serde_json::json!([{"providerMetadata": {"orgId": "y", "shortName": "CISA-ADP"}, "metrics": [
            {"cvssV3_1": {"vectorString": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "baseScore": 9.8}}]}]);

        let (_, s) = parse(record(serde_json::json!([v30, v40, v31]), adp.clone())).unwrap();
        let s = s.unwrap();
        let (source, m) = s.best().unwrap();
        assert_eq!(
            (source, m.version.as_str(), m.score),
            (ScoreSource::CveCna, "3.1", 7.8)
        );

        let (_, s) = parse(record(serde_json::json!([v30.clone(), v40]), adp.clone())).unwrap();
        assert_eq!(s.unwrap().cna.unwrap().score, 9.3, "v4.0 before v3.0");
        let (_, s) = parse(record(serde_json::json!([v30]), adp.clone())).unwrap();
        assert_eq!(s.unwrap().cna.unwrap().version, "3.0");

        // No CNA metric: the ADP's, named by its provider.
        let (_, s) = parse(record(serde_json::json!([]), adp)).unwrap();
        let s = s.unwrap();
        let (source, m) = s.best().unwrap();
        assert_eq!(source, ScoreSource::CveAdp("CISA-ADP".into()));
        assert_eq!(source.to_string(), "cve:adp:CISA-ADP");
        assert_eq!(m.score, 9.8);
    }

    #[test]
    fn malformed_metrics_name_the_record_and_field() {
        let bad = serde_json::json!([{"other": {"type": "x"}}, {"cvssV3_1": {"vectorString": "CVSS:3.1/AV:Q/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}}]);
        let err = parse(record(bad, serde_json::json!([]))).unwrap_err();
        assert!(
            err.starts_with("CVE-2024-0001: containers.cna.metrics[1].cvssV3_1.vectorString:"),
            "{err}"
        );
        let bad =
            serde_json::json!([{"cvssV4_0": {"vectorString": "CVSS:4.0/AV:N", "baseScore": 11}}]);
        let err = parse(record(bad, serde_json::json!([]))).unwrap_err();
        assert!(
            err.contains("containers.cna.metrics[0].cvssV4_0.baseScore"),
            "{err}"
        );
        let mut no_state = record(serde_json::json!([]), serde_json::json!([]));
        no_state["cveMetadata"]["state"] = serde_json::json!(7);
        let err = parse(no_state).unwrap_err();
        assert!(err.contains("cveMetadata.state"), "{err}");

        let mut rejected = record(serde_json::json!([]), serde_json::json!([]));
        rejected["cveMetadata"]["state"] = serde_json::json!("REJECTED");
        assert_eq!(
            parse(rejected).unwrap(),
            ("CVE-2024-0001".to_string(), None)
        );
    }

    #[test]
    fn score_sources_round_trip() {
        for s in ["osv", "cve:cna", "cve:adp:CISA-ADP", "none"] {
            assert_eq!(s.parse::<ScoreSource>().unwrap().to_string(), s);
        }
        assert!("cve:adp:".parse::<ScoreSource>().is_err());
        assert!("nvd".parse::<ScoreSource>().is_err());
    }
}
