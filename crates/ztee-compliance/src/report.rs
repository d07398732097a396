//! The report: every piece of evidence, the verdicts derived from it, and when and over what
//! period it was gathered.

use std::path::Path;

use serde::Serialize;

use crate::controls::{self, Control, Status};
use crate::evidence::activity::{self, Activity};
use crate::evidence::audit_trail::{self, AuditTrailEvidence};
use crate::evidence::configuration::{self, ConfigurationEvidence};
use crate::evidence::images::{self, ImagesEvidence};
use crate::evidence::isolation::{self, IsolationEvidence};
use crate::{ComplianceError, Installation, Window};

/// Everything gathered, before judgement.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub configuration: ConfigurationEvidence,
    pub audit: AuditTrailEvidence,
    pub activity: Activity,
    pub images: ImagesEvidence,
    pub isolation: IsolationEvidence,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub standard: &'static str,
    pub generated_at: String,
    pub ztee_version: &'static str,
    pub data_dir: String,
    /// Start of the activity period (`null`: since the trail began).
    pub since: Option<String>,
    pub until: String,
    pub summary: Summary,
    pub controls: Vec<Control>,
    pub evidence: Evidence,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub met: usize,
    pub attention: usize,
    pub not_met: usize,
}

impl Report {
    /// True when no control is `not met`: the exit status of `ztee compliance report`.
    pub fn passes(&self) -> bool {
        self.summary.not_met == 0
    }
}

/// Reads every source and judges the evidence. Fails only when the installation cannot be read
/// at all; anything wrong *in* it (a tampered trail, a refused image) is reported as a finding.
pub fn gather(installation: &Installation, window: &Window) -> Result<Report, ComplianceError> {
    gather_with_proc(installation, window, Path::new("/proc"))
}

/// [`gather`] with another process table: `/proc` of a container or of a test.
pub fn gather_with_proc(
    installation: &Installation,
    window: &Window,
    proc_root: &Path,
) -> Result<Report, ComplianceError> {
    let audit_dir = installation.audit_dir();
    let evidence = Evidence {
        configuration: configuration::gather(installation)?,
        audit: audit_trail::gather(&installation.data_dir, &audit_dir)?,
        activity: activity::gather(&audit_dir, window),
        images: images::gather(installation)?,
        isolation: isolation::gather(proc_root),
    };
    let controls = controls::evaluate(&evidence);
    let mut summary = Summary::default();
    for control in &controls {
        match control.status {
            Status::Met => summary.met += 1,
            Status::Attention => summary.attention += 1,
            Status::NotMet => summary.not_met += 1,
        }
    }
    Ok(Report {
        standard: "PCI DSS v4.0.1",
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ztee_version: env!("CARGO_PKG_VERSION"),
        data_dir: installation.data_dir.display().to_string(),
        since: window
            .since
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        until: humantime::format_rfc3339_seconds(window.until).to_string(),
        summary,
        controls,
        evidence,
    })
}
