//! IBAN validation: per-country length (the SWIFT IBAN registry) and the ISO 7064 mod-97 check.

/// Country code and total IBAN length.
const LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BI", 27),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DJ", 27),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FK", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MN", 20),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NI", 28),
    (b"NL", 18),
    (b"NO", 15),
    (b"OM", 23),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"RU", 33),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"SO", 23),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
    (b"YE", 30),
];

fn country_length(code: &[u8]) -> Option<usize> {
    LENGTHS
        .iter()
        .find(|(c, _)| c.as_slice() == code)
        .map(|&(_, len)| len)
}

/// If `text` starts with a valid IBAN (compact, or in groups separated by single spaces), the
/// byte length of that IBAN in `text`.
pub(crate) fn valid_prefix_len(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let want = country_length(b.get(..2)?)?;
    let mut chars = Vec::with_capacity(want);
    let mut i = 0;
    while chars.len() < want {
        match b.get(i) {
            Some(c) if c.is_ascii_uppercase() || c.is_ascii_digit() => {
                chars.push(*c);
                i += 1;
            }
            Some(b' ')
                if !chars.is_empty() && b.get(i + 1).is_some_and(u8::is_ascii_alphanumeric) =>
            {
                i += 1;
            }
            _ => return None,
        }
    }
    // The IBAN must end here: more alphanumerics glued on means a different, longer string.
    if b.get(i).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    mod97(&chars).then_some(i)
}

fn mod97(iban: &[u8]) -> bool {
    let rearranged = iban[4..].iter().chain(&iban[..4]);
    let mut rem: u32 = 0;
    for &c in rearranged {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ibans_and_their_lengths() {
        assert_eq!(valid_prefix_len("DE89370400440532013000"), Some(22));
        assert_eq!(
            valid_prefix_len("GB82 WEST 1234 5698 7654 32 rest"),
            Some(27)
        );
        assert_eq!(valid_prefix_len("DE89370400440532013001"), None);
        assert_eq!(valid_prefix_len("DE893704004405320130001"), None);
        assert_eq!(valid_prefix_len("ZZ89370400440532013000"), None);
    }
}
