//! Bytes that arrive in chunks (process output, file transfers) as text: a character split
//! between two chunks is put together again; a byte sequence that is not UTF-8 becomes U+FFFD.

/// Decodes one byte stream. Holds at most 3 bytes between calls: the start of a character
/// whose end has not arrived yet.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    partial: Vec<u8>,
}

impl Utf8Stream {
    /// Appends the text of `chunk` (with any character it completes) to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut String) {
        if self.partial.is_empty() {
            // The usual case: no character waits for its end, so decode the chunk in place.
            self.decode(chunk, out);
            return;
        }
        let mut bytes = std::mem::take(&mut self.partial);
        bytes.extend_from_slice(chunk);
        self.decode(&bytes, out);
    }

    fn decode(&mut self, bytes: &[u8], out: &mut String) {
        let mut rest = bytes;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    return;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid_up_to` is where the valid prefix ends, so this cannot fail.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &after[n..];
                        }
                        None => {
                            self.partial = after.to_vec();
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The stream ended: a character cut off at its end becomes U+FFFD in `out`.
    pub fn finish(&mut self, out: &mut String) {
        if !self.partial.is_empty() {
            self.partial.clear();
            out.push('\u{FFFD}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> String {
        let mut stream = Utf8Stream::default();
        let mut out = String::new();
        for chunk in chunks {
            stream.push(chunk, &mut out);
        }
        stream.finish(&mut out);
        out
    }

    #[test]
    fn a_character_split_anywhere_is_put_together() {
        let text = "card ٤١١١ € 𝟒 end";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(decode(&[a, b]), text, "cut at {cut}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode(&singles), text);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_and_a_cut_end_too() {
        assert_eq!(decode(&[b"a\xffb", b"\xc3"]), "a\u{FFFD}b\u{FFFD}");
        assert_eq!(decode(&[b"\xe2\x82", b"x"]), "\u{FFFD}x");
    }
}
