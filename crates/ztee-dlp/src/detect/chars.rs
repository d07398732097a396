//! Decimal digits of every script, and UTF-8 decoding at a byte offset, for the digit scanner and
//! the operators that work on a card number's digits (masking, hashing, tokens).
//!
//! A card number written in Arabic-Indic (`٤١١١...`), Devanagari or mathematical bold digits is
//! still a card number, and a detector that knows only `0-9` lets it through. Unicode gives every
//! decimal digit (general category Nd) in a contiguous run of ten, zero first, so one table of
//! zeros is the whole of Nd; `char::to_digit` knows only ASCII.

/// The zero of every run of ten Nd digits, ascending (Unicode 18.0; a digit added in a later
/// version is not a digit here until it is added). Generated from the Unicode Character
/// Database: every Nd character is `zero + value` for exactly one entry.
const ND_ZEROS: [u32; 77] = [
    0x0030,  // DIGIT ZERO
    0x0660,  // ARABIC-INDIC DIGIT ZERO
    0x06F0,  // EXTENDED ARABIC-INDIC DIGIT ZERO
    0x07C0,  // NKO DIGIT ZERO
    0x0966,  // DEVANAGARI DIGIT ZERO
    0x09E6,  // BENGALI DIGIT ZERO
    0x0A66,  // GURMUKHI DIGIT ZERO
    0x0AE6,  // GUJARATI DIGIT ZERO
    0x0B66,  // ORIYA DIGIT ZERO
    0x0BE6,  // TAMIL DIGIT ZERO
    0x0C66,  // TELUGU DIGIT ZERO
    0x0CE6,  // KANNADA DIGIT ZERO
    0x0D66,  // MALAYALAM DIGIT ZERO
    0x0DE6,  // SINHALA LITH DIGIT ZERO
    0x0E50,  // THAI DIGIT ZERO
    0x0ED0,  // LAO DIGIT ZERO
    0x0F20,  // TIBETAN DIGIT ZERO
    0x1040,  // MYANMAR DIGIT ZERO
    0x1090,  // MYANMAR SHAN DIGIT ZERO
    0x17E0,  // KHMER DIGIT ZERO
    0x1810,  // MONGOLIAN DIGIT ZERO
    0x1946,  // LIMBU DIGIT ZERO
    0x19D0,  // NEW TAI LUE DIGIT ZERO
    0x1A80,  // TAI THAM HORA DIGIT ZERO
    0x1A90,  // TAI THAM THAM DIGIT ZERO
    0x1B50,  // BALINESE DIGIT ZERO
    0x1BB0,  // SUNDANESE DIGIT ZERO
    0x1C40,  // LEPCHA DIGIT ZERO
    0x1C50,  // OL CHIKI DIGIT ZERO
    0xA620,  // VAI DIGIT ZERO
    0xA8D0,  // SAURASHTRA DIGIT ZERO
    0xA900,  // KAYAH LI DIGIT ZERO
    0xA9D0,  // JAVANESE DIGIT ZERO
    0xA9F0,  // MYANMAR TAI LAING DIGIT ZERO
    0xAA50,  // CHAM DIGIT ZERO
    0xABF0,  // MEETEI MAYEK DIGIT ZERO
    0xFF10,  // FULLWIDTH DIGIT ZERO
    0x104A0, // OSMANYA DIGIT ZERO
    0x10D30, // HANIFI ROHINGYA DIGIT ZERO
    0x10D40, // GARAY DIGIT ZERO
    0x11066, // BRAHMI DIGIT ZERO
    0x110F0, // SORA SOMPENG DIGIT ZERO
    0x11136, // CHAKMA DIGIT ZERO
    0x111D0, // SHARADA DIGIT ZERO
    0x112F0, // KHUDAWADI DIGIT ZERO
    0x11450, // NEWA DIGIT ZERO
    0x114D0, // TIRHUTA DIGIT ZERO
    0x11650, // MODI DIGIT ZERO
    0x116C0, // TAKRI DIGIT ZERO
    0x116D0, // MYANMAR PAO DIGIT ZERO
    0x116DA, // MYANMAR EASTERN PWO KAREN DIGIT ZERO
    0x11730, // AHOM DIGIT ZERO
    0x118E0, // WARANG CITI DIGIT ZERO
    0x11950, // DIVES AKURU DIGIT ZERO
    0x11BF0, // SUNUWAR DIGIT ZERO
    0x11C50, // BHAIKSUKI DIGIT ZERO
    0x11D50, // MASARAM GONDI DIGIT ZERO
    0x11DA0, // GUNJALA GONDI DIGIT ZERO
    0x11DE0, // TOLONG SIKI DIGIT ZERO
    0x11F50, // KAWI DIGIT ZERO
    0x16130, // GURUNG KHEMA DIGIT ZERO
    0x16A60, // MRO DIGIT ZERO
    0x16AC0, // TANGSA DIGIT ZERO
    0x16B50, // PAHAWH HMONG DIGIT ZERO
    0x16D70, // KIRAT RAI DIGIT ZERO
    0x1CCF0, // OUTLINED DIGIT ZERO
    0x1D7CE, // MATHEMATICAL BOLD DIGIT ZERO
    0x1D7D8, // MATHEMATICAL DOUBLE-STRUCK DIGIT ZERO
    0x1D7E2, // MATHEMATICAL SANS-SERIF DIGIT ZERO
    0x1D7EC, // MATHEMATICAL SANS-SERIF BOLD DIGIT ZERO
    0x1D7F6, // MATHEMATICAL MONOSPACE DIGIT ZERO
    0x1E140, // NYIAKENG PUACHUE HMONG DIGIT ZERO
    0x1E2F0, // WANCHO DIGIT ZERO
    0x1E4F0, // NAG MUNDARI DIGIT ZERO
    0x1E5F1, // OL ONAL DIGIT ZERO
    0x1E950, // ADLAM DIGIT ZERO
    0x1FBF0, // SEGMENTED DIGIT ZERO
];

/// The value (0-9) of a decimal digit of any script (Unicode general category Nd).
pub(crate) fn nd_value(c: char) -> Option<u8> {
    let cp = u32::from(c);
    if c.is_ascii() {
        return c.is_ascii_digit().then(|| (cp - 0x30) as u8);
    }
    // The last zero at or below `cp`; `cp` is its digit if it lies within ten of it.
    let idx = ND_ZEROS.partition_point(|&z| z <= cp).checked_sub(1)?;
    let offset = cp - ND_ZEROS[idx];
    (offset < 10).then_some(offset as u8)
}

/// The UTF-8 lead byte of a code point.
const fn lead_byte(cp: u32) -> u8 {
    if cp < 0x80 {
        cp as u8
    } else if cp < 0x800 {
        0xC0 | (cp >> 6) as u8
    } else if cp < 0x1_0000 {
        0xE0 | (cp >> 12) as u8
    } else {
        0xF0 | (cp >> 18) as u8
    }
}

/// Bytes that may start a decimal digit: ASCII digits and the UTF-8 lead bytes of every Nd run.
/// Lets the scanner skip everything else a byte at a time without decoding it.
pub(crate) static DIGIT_START: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < ND_ZEROS.len() {
        let mut d = 0;
        while d < 10 {
            t[lead_byte(ND_ZEROS[i] + d) as usize] = true;
            d += 1;
        }
        i += 1;
    }
    t
};

/// Decodes the character starting at byte `i` of valid UTF-8 `b`, with its length in bytes.
/// `None` at the end, or when `i` is not the start of a character.
#[inline]
pub(crate) fn char_at(b: &[u8], i: usize) -> Option<(char, usize)> {
    let c0 = *b.get(i)?;
    let (len, init) = match c0 {
        0x00..=0x7F => return Some((char::from(c0), 1)),
        0xC0..=0xDF => (2, u32::from(c0 & 0x1F)),
        0xE0..=0xEF => (3, u32::from(c0 & 0x0F)),
        0xF0..=0xF7 => (4, u32::from(c0 & 0x07)),
        _ => return None,
    };
    let mut cp = init;
    for k in 1..len {
        let cb = *b.get(i + k)?;
        if cb & 0xC0 != 0x80 {
            return None;
        }
        cp = (cp << 6) | u32::from(cb & 0x3F);
    }
    char::from_u32(cp).map(|c| (c, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_entry_is_a_run_of_ten_numeric_characters() {
        assert!(
            ND_ZEROS.windows(2).all(|w| w[0] + 10 <= w[1]),
            "sorted, disjoint"
        );
        for &zero in &ND_ZEROS {
            for d in 0..10u32 {
                let c = char::from_u32(zero + d).unwrap_or('\0');
                // std knows Nd only as part of `is_numeric` (Nd, Nl, No), from its own Unicode
                // version; the table's newest digits (Tolong Siki) arrived in 17.0.
                if char::UNICODE_VERSION.0 >= 17 {
                    assert!(c.is_numeric(), "U+{:04X}", zero + d);
                }
                assert_eq!(nd_value(c), Some(d as u8), "U+{:04X}", zero + d);
                let mut buf = [0u8; 4];
                let s = c.encode_utf8(&mut buf);
                assert!(DIGIT_START[usize::from(s.as_bytes()[0])]);
                assert_eq!(char_at(s.as_bytes(), 0), Some((c, s.len())));
            }
        }
    }

    #[test]
    fn other_numerals_and_letters_are_not_decimal_digits() {
        for c in [
            'a',
            '/',
            ':',
            '\u{b2}',
            '\u{bd}',
            '\u{2460}',
            '\u{2167}',
            '\u{3007}',
            '\u{65f}',
            '\u{66a}',
            '\u{ff1a}',
            '\u{1d7cd}',
            '\u{1fbfa}',
        ] {
            assert_eq!(nd_value(c), None, "U+{:04X}", u32::from(c));
        }
        assert_eq!(char_at("é".as_bytes(), 1), None);
        assert_eq!(char_at(b"", 0), None);
    }
}
