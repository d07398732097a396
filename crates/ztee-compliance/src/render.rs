//! The report as Markdown, for an assessor to read or attach: a verdict table first, then each
//! control's findings, then the detail tables (images, running VMs, activity).

use std::fmt::Write as _;

use crate::controls::Status;
use crate::Report;

pub fn render_markdown(report: &Report) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored deliberately.
    let _ = write_report(&mut out, report);
    out
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

fn mark(status: Status) -> &'static str {
    match status {
        Status::Met => "✅ met",
        Status::Attention => "⚠️ attention",
        Status::NotMet => "❌ not met",
    }
}

fn write_report(out: &mut String, r: &Report) -> std::fmt::Result {
    writeln!(out, "# ztee compliance evidence — {}", r.standard)?;
    writeln!(out)?;
    writeln!(out, "| | |")?;
    writeln!(out, "|---|---|")?;
    writeln!(out, "| generated | {} |", r.generated_at)?;
    writeln!(out, "| ztee | {} |", r.ztee_version)?;
    writeln!(out, "| data directory | `{}` |", cell(&r.data_dir))?;
    writeln!(
        out,
        "| activity period | {} to {} |",
        r.since.as_deref().unwrap_or("start of the trail"),
        r.until
    )?;
    writeln!(
        out,
        "| verdicts | {} met, {} attention, {} not met |",
        r.summary.met, r.summary.attention, r.summary.not_met
    )?;
    writeln!(out)?;
    writeln!(out, "## Controls")?;
    writeln!(out)?;
    writeln!(out, "| requirement | control | status |")?;
    writeln!(out, "|---|---|---|")?;
    for c in &r.controls {
        writeln!(
            out,
            "| {} | {} | {} |",
            c.requirement,
            cell(c.title),
            mark(c.status)
        )?;
    }
    for c in &r.controls {
        writeln!(out)?;
        writeln!(out, "### {} — {}", c.requirement, c.title)?;
        writeln!(out)?;
        writeln!(out, "Status: **{}**", c.status.as_str())?;
        writeln!(out)?;
        for f in &c.findings {
            writeln!(out, "- {}", f.replace('\n', " "))?;
        }
        writeln!(out)?;
        writeln!(out, "Operator: {}  ", c.operator)?;
        writeln!(out, "Evidence again: `{}`", c.command)?;
    }
    write_images(out, r)?;
    write_vms(out, r)?;
    write_activity(out, r)
}

fn write_images(out: &mut String, r: &Report) -> std::fmt::Result {
    let images = &r.evidence.images;
    writeln!(out)?;
    writeln!(out, "## Images")?;
    writeln!(out)?;
    writeln!(
        out,
        "Admission policy: {}",
        images.admission_policy.as_deref().map_or(
            "none (only the default guest image boots)".to_string(),
            |p| format!("`{p}`")
        )
    )?;
    if images.images.is_empty() {
        writeln!(out)?;
        writeln!(out, "No images in the local store.")?;
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "| image | digest | signed | SBOM | scan | admission | rule / reason | age (days) | sandboxes now |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|")?;
    for i in &images.images {
        let short = i.digest.get(..19).unwrap_or(&i.digest);
        let why = match &i.reason {
            Some(reason) => format!("{}: {reason}", i.rules.join(",")),
            None => i.rules.join(","),
        };
        writeln!(
            out,
            "| {} | `{short}…` | {} | {} | {} | {} | {} | {} | {} |",
            cell(&i.reference),
            yes_no(i.signed),
            yes_no(i.sbom),
            yes_no(i.vulnerability_scan),
            i.admission,
            cell(&why),
            i.age_days.map_or("-".to_string(), |d| d.to_string()),
            i.in_use
        )?;
    }
    Ok(())
}

fn write_vms(out: &mut String, r: &Report) -> std::fmt::Result {
    let iso = &r.evidence.isolation;
    writeln!(out)?;
    writeln!(out, "## Running sandboxes (network isolation)")?;
    writeln!(out)?;
    if iso.running_vmms.is_empty() {
        writeln!(out, "No ztee VM is running right now.")?;
        return Ok(());
    }
    writeln!(
        out,
        "| pid | VM | network devices | own network namespace | interfaces there |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    for v in &iso.running_vmms {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            v.pid,
            cell(v.name.as_deref().unwrap_or("?")),
            if v.network_devices.is_empty() {
                "none".to_string()
            } else {
                cell(&v.network_devices.join(", "))
            },
            if v.own_network_namespace { "yes" } else { "no" },
            v.namespace_interfaces.join(", ")
        )?;
    }
    Ok(())
}

fn write_activity(out: &mut String, r: &Report) -> std::fmt::Result {
    let a = &r.evidence.activity;
    writeln!(out)?;
    writeln!(out, "## Activity in the period")?;
    writeln!(out)?;
    writeln!(out, "| figure | count |")?;
    writeln!(out, "|---|---|")?;
    let rows: [(&str, u64); 17] = [
        ("events", a.events),
        ("sandboxes and runs started", a.sandboxes_started),
        ("logins", a.logins),
        ("failed logins", a.failed_logins),
        ("authorization refusals", a.authorization_denials),
        ("policy denials", a.policy_denials),
        ("approvals requested", a.approvals.requested),
        ("approvals granted", a.approvals.granted),
        ("approvals rejected", a.approvals.rejected),
        ("approvals expired undecided", a.approvals.expired),
        ("approvals still open", a.approvals.undecided),
        ("egress requests granted", a.egress_grants),
        ("egress requests refused", a.egress_grants_refused),
        ("egress connections relayed", a.egress_allowed),
        ("egress connections refused by the proxy", a.egress_denied),
        ("secrets injected", a.secrets_injected),
        ("reads of the audit trail", a.audit_accesses),
    ];
    for (label, n) in rows {
        writeln!(out, "| {label} | {n} |")?;
    }
    if let Some(median) = a.approvals.median_decision_s {
        writeln!(
            out,
            "| median time to an approval decision (s) | {median} |"
        )?;
    }
    writeln!(out)?;
    writeln!(out, "DLP redactions by entity type:")?;
    writeln!(out)?;
    if a.redactions.is_empty() {
        writeln!(out, "none in the period.")?;
    } else {
        writeln!(out, "| entity | values masked |")?;
        writeln!(out, "|---|---|")?;
        for (entity, n) in &a.redactions {
            writeln!(out, "| {entity} | {n} |")?;
        }
    }
    if !a.failed_logins_by_origin.is_empty() {
        writeln!(out)?;
        writeln!(out, "Failed logins by origin:")?;
        writeln!(out)?;
        writeln!(out, "| origin | failures |")?;
        writeln!(out, "|---|---|")?;
        for (origin, n) in &a.failed_logins_by_origin {
            writeln!(out, "| {origin} | {n} |")?;
        }
    }
    Ok(())
}
