//! Reversible tokenization: each distinct value becomes a numbered placeholder (`<CREDIT_CARD_1>`)
//! that is the same everywhere in a request, and an authorized caller can restore the originals
//! in the response. The map holds raw values: keep it in memory for the request/response pair
//! only; it zeroizes them on drop and never prints them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::digits_of;
use crate::entity::Entity;

#[derive(Default, Clone)]
pub struct TokenMap {
    /// (entity, SHA-256 of the normalized value) -> placeholder. A digest, so the raw value is
    /// held only once, in `by_token`, where it is zeroized on drop.
    by_value: HashMap<(Entity, [u8; 32]), String>,
    /// placeholder -> original text (first occurrence).
    by_token: HashMap<String, Zeroizing<String>>,
    counters: BTreeMap<Entity, usize>,
}

impl TokenMap {
    pub fn new() -> TokenMap {
        TokenMap::default()
    }

    /// The placeholder for `value`, creating the next number for its entity on first sight.
    /// Card numbers are compared by their digits, so one PAN written two ways gets one token.
    pub fn token_for(&mut self, entity: Entity, value: &str) -> String {
        let normalized = Zeroizing::new(if entity == Entity::CreditCard {
            digits_of(value)
        } else {
            value.to_string()
        });
        let key = (
            entity,
            <[u8; 32]>::from(Sha256::digest(normalized.as_bytes())),
        );
        if let Some(token) = self.by_value.get(&key) {
            return token.clone();
        }
        let n = self.counters.entry(entity).or_insert(0);
        *n += 1;
        let token = format!("<{}_{}>", entity.as_str(), n);
        self.by_value.insert(key, token.clone());
        self.by_token
            .insert(token.clone(), Zeroizing::new(value.to_string()));
        token
    }

    /// Replaces every placeholder this map issued with its original value; unknown
    /// placeholder-looking text is left as it is.
    pub fn restore(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find('<') {
            out.push_str(&rest[..open]);
            let tail = &rest[open..];
            let close = tail[1..]
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .map(|i| i + 1);
            match close {
                Some(close) if tail.as_bytes()[close] == b'>' => {
                    let candidate = &tail[..=close];
                    match self.by_token.get(candidate) {
                        Some(original) => out.push_str(original),
                        None => out.push_str(candidate),
                    }
                    rest = &tail[close + 1..];
                }
                _ => {
                    out.push('<');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

impl fmt::Debug for TokenMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenMap")
            .field("tokens", &self.by_token.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_value_same_token_and_restore() {
        let mut m = TokenMap::new();
        let a = m.token_for(Entity::CreditCard, "4111 1111 1111 1111");
        let b = m.token_for(Entity::CreditCard, "4111111111111111");
        let c = m.token_for(Entity::CreditCard, "5500 0000 0000 0004");
        let e = m.token_for(Entity::EmailAddress, "a@b.io");
        assert_eq!(a, "<CREDIT_CARD_1>");
        assert_eq!(a, b);
        assert_eq!(c, "<CREDIT_CARD_2>");
        assert_eq!(e, "<EMAIL_ADDRESS_1>");
        assert_eq!(
            m.restore("pay <CREDIT_CARD_2> not <CREDIT_CARD_9> <x <EMAIL_ADDRESS_1>"),
            "pay 5500 0000 0000 0004 not <CREDIT_CARD_9> <x a@b.io"
        );
        assert!(!format!("{m:?}").contains("4111"));
    }
}
