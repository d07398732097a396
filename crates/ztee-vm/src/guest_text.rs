//! Text from the guest, made safe to show. Its own module, under everything else, so that the
//! lowest layers (the Firecracker API client, the vsock handshake) can use it without reaching
//! [`crate::error`], which names their error types.

/// Text that came from the guest is untrusted: keep it short and printable before it reaches a
/// terminal, a log or an API response.
pub(crate) fn sanitize_guest_text(text: &str) -> String {
    text.chars()
        .take(512)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn guest_text_is_bounded_and_printable() {
        let hostile = format!("\x1b[2J{}\n\r", "x".repeat(10_000));
        let clean = super::sanitize_guest_text(&hostile);
        assert_eq!(clean.chars().count(), 512);
        assert!(!clean.chars().any(char::is_control));
    }
}
