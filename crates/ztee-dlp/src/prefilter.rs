//! Block-at-a-time prefilters: which stretches of a text can hold a finding at all.
//!
//! Most of what a gateway scans (logs, prose, JSON) holds no card number and no encoded blob, and
//! reading it a byte at a time through the detectors' state machines costs more than everything
//! else together. Here the text is classified 64 bytes at a time into bit masks (SSE2 on x86_64,
//! a table elsewhere), and only the stretches that pass a necessary condition are handed to the
//! exact detectors. Each condition over-approximates what its detector accepts, so skipping the
//! rest changes no finding; `tests` compare both readings on generated text.

const BLOCK: usize = 64;

/// One 64-byte block as bit masks, bit `i` for byte `i`.
#[derive(Clone, Copy, Default)]
struct Masks {
    /// ASCII `0-9`.
    digit: u64,
    /// Bytes >= 0x80: part of a non-ASCII character, which may be a digit of another script, a
    /// Unicode separator or an invisible character.
    high: u64,
    /// The ASCII separators the digit scanner joins groups with (see `detect::digits`).
    sep: u64,
    /// `.`: IPv4 addresses need three.
    dot: u64,
    /// The standard base64 alphabet without padding: ASCII letters, digits, `+`, `/`.
    b64: u64,
}

/// Bytes the digit scanner accepts between digit groups: tab, line feed, vertical tab, form
/// feed, carriage return, space, `(`, `)`, `+`, `,`, `-`, `.`, `/`, `_`.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn is_ascii_sep(c: u8) -> bool {
    matches!(c, 0x09..=0x0D | b' ' | b'(' | b')' | b'+'..=b'/' | b'_')
}

#[cfg(any(test, not(target_arch = "x86_64")))]
fn is_b64(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'+' || c == b'/'
}

#[cfg(any(test, not(target_arch = "x86_64")))]
fn classify_scalar(block: &[u8; BLOCK]) -> Masks {
    let mut m = Masks::default();
    for (i, &c) in block.iter().enumerate() {
        let bit = 1u64 << i;
        if c.is_ascii_digit() {
            m.digit |= bit;
        }
        if c >= 0x80 {
            m.high |= bit;
        }
        if is_ascii_sep(c) {
            m.sep |= bit;
        }
        if c == b'.' {
            m.dot |= bit;
        }
        if is_b64(c) {
            m.b64 |= bit;
        }
    }
    m
}

/// The masks one pass needs: `b64` alone when `B64`, the others when not (each pass computes only
/// its own, which halves the classification cost).
#[cfg(target_arch = "x86_64")]
fn classify<const B64: bool>(block: &[u8; BLOCK]) -> Masks {
    // SAFETY: SSE2 is part of the x86_64 baseline: every CPU this code is built for has it.
    unsafe { classify_sse2::<B64>(block) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn classify_sse2<const B64: bool>(block: &[u8; BLOCK]) -> Masks {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_min_epu8,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };

    #[inline]
    #[target_feature(enable = "sse2")]
    fn splat(c: u8) -> __m128i {
        _mm_set1_epi8(c as i8)
    }
    #[inline]
    #[target_feature(enable = "sse2")]
    fn eq(x: __m128i, c: u8) -> __m128i {
        _mm_cmpeq_epi8(x, splat(c))
    }
    /// `lo <= x <= hi`, unsigned: SSE2 has unsigned min/max but no unsigned compare.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn within(x: __m128i, lo: u8, hi: u8) -> __m128i {
        _mm_and_si128(
            _mm_cmpeq_epi8(_mm_max_epu8(x, splat(lo)), x),
            _mm_cmpeq_epi8(_mm_min_epu8(x, splat(hi)), x),
        )
    }
    #[inline]
    #[target_feature(enable = "sse2")]
    fn bits(v: __m128i) -> u64 {
        u64::from(_mm_movemask_epi8(v) as u16)
    }

    let mut m = Masks::default();
    for (k, lane) in block.chunks_exact(16).enumerate() {
        // SAFETY: `lane` is 16 readable bytes (chunks_exact(16)), and `loadu` has no alignment
        // requirement.
        let x = unsafe { _mm_loadu_si128(lane.as_ptr().cast::<__m128i>()) };
        let digit = within(x, b'0', b'9');
        let shift = 16 * k;
        if B64 {
            let b64 = _mm_or_si128(
                _mm_or_si128(
                    digit,
                    _mm_or_si128(within(x, b'A', b'Z'), within(x, b'a', b'z')),
                ),
                _mm_or_si128(eq(x, b'+'), eq(x, b'/')),
            );
            m.b64 |= bits(b64) << shift;
            continue;
        }
        let sep = _mm_or_si128(
            _mm_or_si128(within(x, 0x09, 0x0D), eq(x, b' ')),
            _mm_or_si128(
                _mm_or_si128(within(x, b'(', b')'), within(x, b'+', b'/')),
                eq(x, b'_'),
            ),
        );
        m.digit |= bits(digit) << shift;
        m.high |= bits(x) << shift;
        m.sep |= bits(sep) << shift;
        m.dot |= bits(eq(x, b'.')) << shift;
    }
    m
}

#[cfg(not(target_arch = "x86_64"))]
fn classify<const B64: bool>(block: &[u8; BLOCK]) -> Masks {
    classify_scalar(block)
}

/// Calls `f(offset, masks)` for every block of `b`; the last one is padded with NUL bytes, which
/// are in no class.
fn blocks<const B64: bool>(b: &[u8], mut f: impl FnMut(usize, &Masks)) {
    let mut chunks = b.chunks_exact(BLOCK);
    let mut offset = 0;
    for chunk in &mut chunks {
        if let Ok(block) = <&[u8; BLOCK]>::try_from(chunk) {
            f(offset, &classify::<B64>(block));
        }
        offset += BLOCK;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut block = [0u8; BLOCK];
        block[..tail.len()].copy_from_slice(tail);
        f(offset, &classify::<B64>(&block));
    }
}

/// Bits `from..64`.
fn from_bit(from: u32) -> u64 {
    u64::MAX.checked_shl(from).unwrap_or(0)
}

/// Bits `from..to`.
fn bit_range(from: u32, to: u32) -> u64 {
    from_bit(from) & !from_bit(to)
}

/// What a digit run must have for the wanted entities to be possible in it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DigitNeed {
    /// Fewest digits of any wanted number other than an IPv4 address (12 for cards, 8 for SSN,
    /// routing, bank and phone numbers); `usize::MAX` when none is wanted.
    pub digits: usize,
    /// IPv4 addresses are wanted: four digits and three dots are enough.
    pub ipv4: bool,
}

/// A stretch of text between two bytes that end every digit run (ASCII other than digits and
/// separators), with upper bounds of its digits and dots: every non-ASCII byte counts as both,
/// since it may be a digit of another script or a full-width stop.
struct Segment {
    start: usize,
    digits: usize,
    dots: usize,
}

impl Segment {
    fn may_hold(&self, need: DigitNeed) -> bool {
        self.digits >= need.digits || (need.ipv4 && self.digits >= 4 && self.dots >= 3)
    }
}

/// Calls `f(start, end)`, in order, for every stretch of `b` that can hold a digit run meeting
/// `need`. A digit run never crosses an ASCII byte that is neither a digit nor a separator, so
/// every run lies inside one stretch, and the stretches that are skipped hold no run that could
/// be a wanted number. `start` is the stretch's first digit or non-ASCII byte.
pub(crate) fn digit_stretches(b: &[u8], need: DigitNeed, mut f: impl FnMut(usize, usize)) {
    let mut open: Option<Segment> = None;
    let mut close = |open: &mut Option<Segment>, end: usize| {
        if let Some(seg) = open.take() {
            if seg.may_hold(need) {
                f(seg.start, end);
            }
        }
    };
    blocks::<false>(b, |offset, m| {
        let maybe_digit = m.digit | m.high;
        let ends_run = !(maybe_digit | m.sep);
        let maybe_dot = m.dot | m.high;
        // Ends the open stretch at the first run-ending byte from bit `pos` on, if any, counting
        // the dots it has up to there; returns whether it ended.
        let mut end_from = |open: &mut Option<Segment>, pos: u32, until: u32| {
            let ends = ends_run & bit_range(pos, until);
            let at = if ends == 0 {
                until
            } else {
                ends.trailing_zeros()
            };
            if let Some(seg) = open.as_mut() {
                seg.dots += (m.dot & bit_range(pos, at)).count_ones() as usize;
            }
            if ends != 0 {
                close(open, offset + at as usize);
            }
        };
        if maybe_digit == 0 {
            // The common case in prose: no digit, so at most an open stretch ends here.
            if ends_run != 0 || open.is_some() {
                end_from(&mut open, 0, 64);
            }
            return;
        }
        let mut pos = 0u32;
        while pos < 64 {
            let digits_ahead = maybe_digit & from_bit(pos);
            if digits_ahead == 0 {
                end_from(&mut open, pos, 64);
                return;
            }
            let d = digits_ahead.trailing_zeros();
            end_from(&mut open, pos, d);
            // Dots before `d` in a stretch still open were counted by `end_from`; those before
            // the first digit of a new one separate no digits.
            let seg = open.get_or_insert(Segment {
                start: offset + d as usize,
                digits: 0,
                dots: 0,
            });
            let ends_after = ends_run & from_bit(d);
            let e = if ends_after == 0 {
                64
            } else {
                ends_after.trailing_zeros()
            };
            let span = bit_range(d, e);
            seg.digits += (maybe_digit & span).count_ones() as usize;
            seg.dots += (maybe_dot & span).count_ones() as usize;
            if e < 64 {
                end_from(&mut open, e, e + 1);
            }
            pos = e + 1;
        }
    });
    close(&mut open, b.len());
}

/// Calls `f(start)` for the start of every maximal run of base64 alphabet bytes that is at least
/// `min_len` long (at most 64), in order.
pub(crate) fn b64_runs(b: &[u8], min_len: usize, mut f: impl FnMut(usize)) {
    debug_assert!((1..=BLOCK).contains(&min_len));
    // Length of the run that reaches the end of the previous block.
    let mut carried = 0usize;
    blocks::<true>(b, |offset, m| {
        let ones = m.b64;
        if ones == !0 {
            carried += BLOCK;
            return;
        }
        let low = ones.trailing_ones();
        if carried + low as usize >= min_len {
            f(offset - carried);
        }
        let high = ones.leading_ones();
        // Runs that start and end inside this block: the low run and the high run removed.
        let inner = ones & from_bit(low) & !from_bit(64 - high);
        if has_run(inner, min_len) {
            let mut rest = inner;
            while rest != 0 {
                let start = rest.trailing_zeros();
                let len = (rest >> start).trailing_ones();
                if len as usize >= min_len {
                    f(offset + start as usize);
                }
                rest &= from_bit(start + len);
            }
        }
        carried = high as usize;
    });
    if carried >= min_len {
        f(b.len() - carried);
    }
}

/// Whether `x` has `len` or more consecutive ones (`len` <= 64).
fn has_run(mut x: u64, len: usize) -> bool {
    // After each step, bit i is set iff bits i..i+covered are all set.
    let mut covered = 1usize;
    while covered < len && x != 0 {
        let step = covered.min(len - covered);
        x &= x >> step;
        covered += step;
    }
    x != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic xorshift, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[test]
    fn simd_and_scalar_classes_agree_on_every_byte() {
        let mut block = [0u8; BLOCK];
        for first in (0..=255u8).step_by(BLOCK) {
            for (i, c) in block.iter_mut().enumerate() {
                *c = first.wrapping_add(i as u8);
            }
            let (a, b64, b) = (
                classify::<false>(&block),
                classify::<true>(&block).b64,
                classify_scalar(&block),
            );
            assert_eq!(
                (a.digit, a.high, a.sep, a.dot, b64),
                (b.digit, b.high, b.sep, b.dot, b.b64),
                "bytes from {first}"
            );
        }
    }

    /// The stretches as a byte-at-a-time reading defines them.
    fn stretches_slowly(b: &[u8], need: DigitNeed) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let ends = |c: u8| c < 0x80 && !c.is_ascii_digit() && !is_ascii_sep(c);
            if ends(b[i]) {
                i += 1;
                continue;
            }
            let mut j = i;
            let mut seg = Segment {
                start: usize::MAX,
                digits: 0,
                dots: 0,
            };
            while j < b.len() && !ends(b[j]) {
                if b[j].is_ascii_digit() || b[j] >= 0x80 {
                    seg.start = seg.start.min(j);
                    seg.digits += 1;
                }
                if (b[j] == b'.' || b[j] >= 0x80) && seg.start != usize::MAX {
                    seg.dots += 1;
                }
                j += 1;
            }
            if seg.digits > 0 && seg.may_hold(need) {
                out.push((seg.start, j));
            }
            i = j;
        }
        out
    }

    fn b64_runs_slowly(b: &[u8], min_len: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let start = i;
            while i < b.len() && is_b64(b[i]) {
                i += 1;
            }
            if i - start >= min_len {
                out.push(start);
            }
            i = i.max(start + 1);
        }
        out
    }

    /// Text of every length around the block size, from an alphabet where runs and stretches of
    /// every length start and end at every offset, including across block edges.
    #[test]
    fn stretches_and_runs_match_a_byte_at_a_time_reading() {
        let alphabet: &[u8] = b"0123456789 -.\n/x=:Ab+_\xc3\xa9";
        let needs = [
            DigitNeed {
                digits: 12,
                ipv4: false,
            },
            DigitNeed {
                digits: 8,
                ipv4: true,
            },
            DigitNeed {
                digits: usize::MAX,
                ipv4: true,
            },
        ];
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for round in 0..3000 {
            let len = rng.below(300);
            // Bias towards long runs of one class so that thresholds are crossed.
            let dense = round % 3;
            let text: Vec<u8> = (0..len)
                .map(|_| match dense {
                    0 => alphabet[rng.below(alphabet.len())],
                    1 => alphabet[rng.below(14)],
                    _ => b"0123456789abcdefXYZ+/"[rng.below(21)],
                })
                .collect();
            for need in needs {
                let mut fast = Vec::new();
                digit_stretches(&text, need, |s, e| fast.push((s, e)));
                assert_eq!(fast, stretches_slowly(&text, need), "{text:?} {need:?}");
            }
            for min_len in [1, 4, 24, 63, 64] {
                let mut fast = Vec::new();
                b64_runs(&text, min_len, |s| fast.push(s));
                assert_eq!(fast, b64_runs_slowly(&text, min_len), "{text:?} {min_len}");
            }
        }
    }

    #[test]
    fn a_stretch_across_a_block_edge_is_reported_once_whole() {
        for at in 40..70 {
            let mut text = vec![b'x'; 140];
            text[at..at + 19].copy_from_slice(b"4111 1111 1111 1111");
            let mut found = Vec::new();
            let need = DigitNeed {
                digits: 12,
                ipv4: false,
            };
            digit_stretches(&text, need, |s, e| found.push((s, e)));
            assert_eq!(found, vec![(at, at + 19)], "at {at}");
        }
    }

    #[test]
    fn runs_longer_than_a_block_and_at_the_ends() {
        let text = [b"A".repeat(200), b"!".to_vec(), b"B".repeat(30)].concat();
        let mut found = Vec::new();
        b64_runs(&text, 24, |s| found.push(s));
        assert_eq!(found, vec![0, 201]);
        assert!(has_run(0xFFFF_FF00, 24) && !has_run(0x7FFF_FF00, 24));
    }
}
