//! Offline vulnerability scanning: OSV records ([`osv`]) loaded into a local database ([`db`]),
//! matched against an SBOM catalog with each ecosystem's own version ordering ([`version`]),
//! scored from CVSS v3.x vectors ([`cvss`]), filtered by allowlists and VEX ([`vex`]) and gated
//! on scores, not vendor labels ([`scan`]).

pub mod cvss;
pub mod db;
pub mod osv;
pub mod scan;
pub mod version;
pub mod vex;
