use std::fmt;

use zeroize::Zeroizing;

/// A secret value. Its memory is zeroed when dropped, and `Debug` never shows it.
#[derive(Clone)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

/// Largest secret value accepted (64 KiB): certificates and key files fit, bulk data does not.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> Result<Self, crate::SecretError> {
        let value = Self(Zeroizing::new(bytes));
        if value.0.is_empty() {
            return Err(crate::SecretError::EmptyValue);
        }
        if value.0.len() > MAX_SECRET_BYTES {
            return Err(crate::SecretError::ValueTooLarge {
                len: value.0.len(),
                max: MAX_SECRET_BYTES,
            });
        }
        Ok(value)
    }

    /// The bytes, for injection and DLP registration only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as text, when it is UTF-8 (environment variables need text).
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue([{} bytes])", self.0.len())
    }
}
