//! Payment card numbers (PAN): issuer ranges, lengths and the Luhn check.
//!
//! Which digits form a candidate is decided by [`super::digits`]; this module only answers "is
//! this digit sequence a PAN a card network would issue?".

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CardBrand {
    Visa,
    Mastercard,
    Amex,
    Discover,
    Jcb,
    DinersClub,
    UnionPay,
    Maestro,
    Mir,
    RuPay,
    Verve,
    Troy,
    Uatp,
}

/// The Luhn (mod 10) check over decimal digit values (0-9, not ASCII).
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let d = u32::from(d);
        sum += if i % 2 == 1 {
            let x = d * 2;
            if x > 9 {
                x - 9
            } else {
                x
            }
        } else {
            d
        };
    }
    sum % 10 == 0
}

fn prefix(digits: &[u8], n: usize) -> u32 {
    digits
        .iter()
        .take(n)
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d))
}

impl CardBrand {
    /// The brand whose issuer range and length rules `digits` (values 0-9) satisfy, if any. Only
    /// networks' published ranges are accepted: a Luhn-valid number in no range is not a PAN.
    pub fn of(digits: &[u8]) -> Option<CardBrand> {
        let len = digits.len();
        if !(12..=19).contains(&len) {
            return None;
        }
        let p1 = prefix(digits, 1);
        let p2 = prefix(digits, 2);
        let p3 = prefix(digits, 3);
        let p4 = prefix(digits, 4);
        let p6 = prefix(digits, 6);
        let in16_19 = (16..=19).contains(&len);
        if p1 == 4 && matches!(len, 13 | 16 | 19) {
            return Some(CardBrand::Visa);
        }
        if ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16 {
            return Some(CardBrand::Mastercard);
        }
        if (p2 == 34 || p2 == 37) && len == 15 {
            return Some(CardBrand::Amex);
        }
        if (2200..=2204).contains(&p4) && in16_19 {
            return Some(CardBrand::Mir);
        }
        if ((300..=305).contains(&p3) || p4 == 3095 || p2 == 36 || p2 == 38 || p2 == 39)
            && (14..=19).contains(&len)
        {
            return Some(CardBrand::DinersClub);
        }
        if (3528..=3589).contains(&p4) && in16_19 {
            return Some(CardBrand::Jcb);
        }
        if (p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || (622126..=622925).contains(&p6))
            && in16_19
        {
            return Some(CardBrand::Discover);
        }
        if (p2 == 62 || (8100..=8171).contains(&p4)) && in16_19 {
            return Some(CardBrand::UnionPay);
        }
        if (p2 == 60 || p2 == 82 || p3 == 508) && len == 16 {
            return Some(CardBrand::RuPay);
        }
        if ((506099..=506198).contains(&p6)
            || (507865..=507964).contains(&p6)
            || (650002..=650027).contains(&p6))
            && matches!(len, 16 | 18 | 19)
        {
            return Some(CardBrand::Verve);
        }
        if p4 == 9792 && len == 16 {
            return Some(CardBrand::Troy);
        }
        // UATP (airline cards such as AirPlus): 1 and 15 digits.
        if p1 == 1 && len == 15 {
            return Some(CardBrand::Uatp);
        }
        // Maestro: the well-known prefixes at every length 12-19; the wider 50/56-69 ranges only
        // at 16-19, because short numbers in those ranges are mostly not cards.
        let maestro_named = matches!(p4, 5018 | 5020 | 5038 | 5893 | 6304 | 6759 | 6761..=6763);
        if maestro_named || ((p2 == 50 || (56..=69).contains(&p2)) && in16_19) {
            return Some(CardBrand::Maestro);
        }
        None
    }

    /// Length of the bank identification number that PCI DSS 3.4.1 lets a masked PAN show: 8 for
    /// networks that moved to 8-digit BINs on 16+ digit PANs, else 6.
    pub fn bin_len(digits: &[u8]) -> usize {
        match CardBrand::of(digits) {
            Some(CardBrand::Visa | CardBrand::Mastercard | CardBrand::Discover)
                if digits.len() >= 16 =>
            {
                8
            }
            _ => 6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Vec<u8> {
        s.bytes().map(|b| b - b'0').collect()
    }

    #[test]
    fn luhn_accepts_known_test_pans_and_rejects_one_digit_changes() {
        for pan in [
            "4111111111111111",
            "5500000000000004",
            "378282246310005",
            "6011111111111117",
            "3530111333300000",
            "30569309025904",
            "6200000000000005",
            "2223003122003222",
        ] {
            assert!(luhn_valid(&d(pan)), "{pan}");
            let mut bad = d(pan);
            bad[3] = (bad[3] + 1) % 10;
            assert!(!luhn_valid(&bad), "{pan} with one digit changed");
        }
    }

    #[test]
    fn brands_follow_issuer_ranges_and_lengths() {
        assert_eq!(CardBrand::of(&d("4111111111111111")), Some(CardBrand::Visa));
        assert_eq!(CardBrand::of(&d("4222222222222")), Some(CardBrand::Visa));
        assert_eq!(
            CardBrand::of(&d("4111111111111111110")),
            Some(CardBrand::Visa)
        );
        assert_eq!(
            CardBrand::of(&d("2221000000000009")),
            Some(CardBrand::Mastercard)
        );
        assert_eq!(
            CardBrand::of(&d("2720990000000007")),
            Some(CardBrand::Mastercard)
        );
        assert_eq!(CardBrand::of(&d("2721000000000000")), None);
        assert_eq!(CardBrand::of(&d("378282246310005")), Some(CardBrand::Amex));
        assert_eq!(CardBrand::of(&d("37828224631000")), None);
        assert_eq!(CardBrand::of(&d("3530111333300000")), Some(CardBrand::Jcb));
        assert_eq!(
            CardBrand::of(&d("30569309025904")),
            Some(CardBrand::DinersClub)
        );
        assert_eq!(
            CardBrand::of(&d("6200000000000005")),
            Some(CardBrand::UnionPay)
        );
        assert_eq!(
            CardBrand::of(&d("6011000990139424")),
            Some(CardBrand::Discover)
        );
        assert_eq!(CardBrand::of(&d("675964982643")), Some(CardBrand::Maestro));
        assert_eq!(CardBrand::of(&d("2200000000000004")), Some(CardBrand::Mir));
        assert_eq!(CardBrand::of(&d("1234567890123456")), None);
        assert_eq!(CardBrand::of(&d("122000000000003")), Some(CardBrand::Uatp));
        assert_eq!(CardBrand::of(&d("411111111111")), None);
        assert_eq!(CardBrand::bin_len(&d("4111111111111111")), 8);
        assert_eq!(CardBrand::bin_len(&d("378282246310005")), 6);
    }
}
