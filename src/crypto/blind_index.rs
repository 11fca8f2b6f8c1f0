//! A keyed hash of the normalised email, so a profile can be found by email without the
//! email being stored in plaintext.

use aws_lc_rs::hmac;

pub struct BlindIndexKey(hmac::Key);

impl BlindIndexKey {
    pub fn new(bytes: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// Lowercase hex HMAC-SHA256 of the normalised email.
    pub fn email(&self, email: &str) -> String {
        let tag = hmac::sign(&self.0, normalise_email(email).as_bytes());
        hex::encode(tag.as_ref())
    }
}

/// Trimmed and lowercased: `Alice@Example.COM ` and `alice@example.com` index alike.
pub fn normalise_email(email: &str) -> String {
    email.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_spaces_do_not_change_the_blind_index() {
        let key = BlindIndexKey::new(&[7u8; 32]);
        assert_eq!(
            key.email(" Alice@Example.COM"),
            key.email("alice@example.com")
        );
        assert_ne!(
            key.email("alice@example.com"),
            BlindIndexKey::new(&[8u8; 32]).email("alice@example.com")
        );
    }
}
