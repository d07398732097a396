//! Evidence for a PCI DSS v4.0.1 assessment, gathered from a ztee installation rather than
//! asserted: the configuration as loaded, the audit trail as verified, every stored image as
//! admission sees it, the VMMs running right now, and what the audit trail says happened in a
//! period (failed logins, refusals, redactions, approvals, egress).
//!
//! ```no_run
//! # fn example() -> Result<(), ztee_compliance::ComplianceError> {
//! use ztee_compliance::{Installation, Window};
//!
//! let installation = Installation::load(std::path::Path::new("/var/lib/ztee"), None, None)?;
//! let report = ztee_compliance::gather(&installation, &Window::last_days(90))?;
//! println!("{}", ztee_compliance::render_markdown(&report));
//! # Ok(()) }
//! ```
//!
//! Each module under [`evidence`] reads one source; [`controls`] turns the evidence into one
//! verdict per requirement; [`render_markdown`] prints it for people, `serde_json` for machines.

pub mod controls;
mod error;
pub mod evidence;
mod installation;
mod render;
mod report;

pub use controls::{Control, Status};
pub use error::ComplianceError;
pub use installation::{Installation, Window};
pub use render::render_markdown;
pub use report::{gather, gather_with_proc, Evidence, Report, Summary};
