//! The shape checks every action passes, whichever door it came through: ceilings from the
//! configuration, environment names, guest paths and image references.

use std::time::Duration;

use crate::error::ActionError;
use crate::state::AppState;

/// Checks a caller-supplied value against the configured ceiling.
pub fn bounded<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, ActionError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(ActionError::bad_request(format!(
            "{field} = {v} is out of range; allowed: {min} to {max}"
        )));
    }
    Ok(v)
}

pub fn timeout(
    state: &AppState,
    requested: Option<u64>,
    default: u64,
) -> Result<Duration, ActionError> {
    bounded(
        "timeout_s",
        requested,
        default,
        1,
        state.config.limits.max_timeout_s,
    )
    .map(Duration::from_secs)
}

/// Environment names are what a shell accepts; values may not hold NUL (they go to execve).
pub fn check_env(env: &std::collections::BTreeMap<String, String>) -> Result<(), ActionError> {
    for (k, v) in env {
        let name_ok = !k.is_empty()
            && k.len() <= 256
            && !k.as_bytes()[0].is_ascii_digit()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(ActionError::bad_request(format!(
                "env name {k:?} is not valid; use letters, digits and _ (not starting with a digit)"
            )));
        }
        if v.contains('\0') {
            return Err(ActionError::bad_request(format!(
                "env.{k} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

/// Guest paths are absolute, without NUL, and of sane length.
pub fn check_guest_path(field: &str, path: &str) -> Result<(), ActionError> {
    if !path.starts_with('/') || path.len() > 4096 || path.contains('\0') {
        return Err(ActionError::bad_request(format!(
            "{field} {path:?} must be an absolute path (starting with /) without NUL, at most 4096 bytes"
        )));
    }
    if path.split('/').any(|seg| seg == "..") {
        return Err(ActionError::bad_request(format!(
            "{field} {path:?} must not contain `..`"
        )));
    }
    Ok(())
}

pub fn check_image(image: Option<&str>) -> Result<(), ActionError> {
    if let Some(image) = image {
        let ok = !image.is_empty()
            && image.len() <= 255
            && image
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b));
        if !ok {
            return Err(ActionError::bad_request(format!(
                "image {image:?} is not a valid image reference"
            )));
        }
    }
    Ok(())
}
