//! Entity types. Names follow Presidio's where Presidio has one, so Presidio clients can ask for
//! them unchanged.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::DlpError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Entity {
    CreditCard,
    CardTrackData,
    CardVerificationCode,
    CardExpiry,
    CardPinBlock,
    CardholderName,
    PostalAddress,
    IbanCode,
    UsSsn,
    EmailAddress,
    PhoneNumber,
    UsBankNumber,
    AbaRoutingNumber,
    IpAddress,
    Secret,
}

impl Entity {
    pub const ALL: [Entity; 15] = [
        Entity::CreditCard,
        Entity::CardTrackData,
        Entity::CardVerificationCode,
        Entity::CardExpiry,
        Entity::CardPinBlock,
        Entity::CardholderName,
        Entity::PostalAddress,
        Entity::IbanCode,
        Entity::UsSsn,
        Entity::EmailAddress,
        Entity::PhoneNumber,
        Entity::UsBankNumber,
        Entity::AbaRoutingNumber,
        Entity::IpAddress,
        Entity::Secret,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Entity::CreditCard => "CREDIT_CARD",
            Entity::CardTrackData => "CARD_TRACK_DATA",
            Entity::CardVerificationCode => "CARD_VERIFICATION_CODE",
            Entity::CardExpiry => "CARD_EXPIRY",
            Entity::CardPinBlock => "CARD_PIN_BLOCK",
            Entity::CardholderName => "CARDHOLDER_NAME",
            Entity::PostalAddress => "POSTAL_ADDRESS",
            Entity::IbanCode => "IBAN_CODE",
            Entity::UsSsn => "US_SSN",
            Entity::EmailAddress => "EMAIL_ADDRESS",
            Entity::PhoneNumber => "PHONE_NUMBER",
            Entity::UsBankNumber => "US_BANK_NUMBER",
            Entity::AbaRoutingNumber => "ABA_ROUTING_NUMBER",
            Entity::IpAddress => "IP_ADDRESS",
            Entity::Secret => "SECRET",
        }
    }

    /// Cardholder data and sensitive authentication data: what PCI DSS scopes.
    pub fn is_card_data(self) -> bool {
        matches!(
            self,
            Entity::CreditCard
                | Entity::CardTrackData
                | Entity::CardVerificationCode
                | Entity::CardExpiry
                | Entity::CardPinBlock
        )
    }

    /// Cardholder data only together with a card number: the cardholder name (PCI DSS) and the
    /// postal address are personal data on their own, cardholder data next to a PAN. Never SAD.
    pub fn is_card_data_with_pan(self) -> bool {
        matches!(self, Entity::CardholderName | Entity::PostalAddress)
    }

    /// Sensitive authentication data (PCI DSS 3.3.1): full track data, card verification codes
    /// and PINs / PIN blocks, which must never be stored after authorization. The card number
    /// and its expiry date are cardholder data, not SAD.
    pub fn is_sensitive_authentication_data(self) -> bool {
        matches!(
            self,
            Entity::CardTrackData | Entity::CardVerificationCode | Entity::CardPinBlock
        )
    }

    /// Parses a comma-separated list such as `CREDIT_CARD,US_SSN` (case-insensitive).
    pub fn parse_list(list: &str) -> Result<Vec<Entity>, DlpError> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Entity::from_str)
            .collect()
    }

    fn supported_list() -> String {
        Entity::ALL
            .iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Entity {
    type Err = DlpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Entity::ALL
            .iter()
            .copied()
            .find(|e| e.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| DlpError::UnknownEntity {
                name: s.chars().take(64).collect(),
                supported: Entity::supported_list(),
            })
    }
}
