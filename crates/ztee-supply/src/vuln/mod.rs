//! Offline vulnerability scanning: OSV records ([`osv`]) loaded into a local database ([`db`]),
//! matched against an SBOM catalog with each ecosystem's own version ordering ([`version`]),
//! scored from CVSS vectors ([`cvss`]) of the OSV record or of the CVE program's records
//! ([`cve5`]), refined by the Debian security tracker ([`debian`]), filtered by allowlists and
//! VEX ([`vex`]) and gated on scores, not vendor labels ([`scan`]).

pub mod cve5;
pub mod cvss;
pub mod db;
pub mod debian;
pub mod osv;
pub mod scan;
pub mod version;
pub mod vex;
