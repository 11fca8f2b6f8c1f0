//! AES-256-GCM with additional authenticated data that binds each ciphertext to its place.
//!
//! Field ciphertext: `v1.<key_version>.<base64url(nonce ‖ ciphertext ‖ tag)>`, with
//! AAD = `profile-sync/field/v1` 0x00 `<user uuid>` 0x00 `<field path>` 0x00 `<key_version>`.
//! Wrapped data key: `nonce ‖ ciphertext ‖ tag` under the key-encryption key, with
//! AAD = `profile-sync/user-key/v1` 0x00 `<user uuid>` 0x00 `<key_version>`.
//! Dead-letter payload: `nonce ‖ ciphertext ‖ tag` under a data key (the user's, or a
//! dead-letter key), with AAD = `profile-sync/dead-letter/v1` 0x00 `<key owner uuid>` 0x00
//! `<key_version>`.
//! Keyring key sealed under a master key: `nonce ‖ ciphertext ‖ tag`, with AAD =
//! `profile-sync/keyring-key/v1` 0x00 `<key id>`.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::fmt::Write as _;
use std::io::Write as _;
use uuid::Uuid;
use zeroize::Zeroizing;

/// The prefix of every field ciphertext; bump it if the format ever changes.
pub const FIELD_FORMAT: &str = "v1";
const FIELD_AAD: &[u8] = b"profile-sync/field/v1";
const KEY_AAD: &[u8] = b"profile-sync/user-key/v1";
const LETTER_AAD: &[u8] = b"profile-sync/dead-letter/v1";
const KEYRING_AAD: &[u8] = b"profile-sync/keyring-key/v1";
const TAG_LEN: usize = 16;
/// What sealing adds to a plaintext: the nonce and the tag.
pub const SEALED_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ciphertext is not in the {FIELD_FORMAT} format")]
    Format,
    #[error("ciphertext does not decrypt under this key for this user, field and key version")]
    Authentication,
    #[error("the system random source failed")]
    Random,
}

/// A 256-bit AES key. Zeroed on drop.
pub struct DataKey {
    bytes: Zeroizing<[u8; 32]>,
    aead: LessSafeKey,
}

impl DataKey {
    pub fn generate() -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| CryptoError::Random)?;
        Ok(Self::from_bytes(bytes))
    }

    pub fn from_slice(slice: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; 32] = slice.try_into().map_err(|_| CryptoError::Format)?;
        Ok(Self::from_bytes(Zeroizing::new(arr)))
    }

    fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        let aead =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes.as_ref()).expect("32-byte key"));
        Self { bytes, aead }
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.bytes
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Nonces per draw from the system random source.
const NONCES_PER_DRAW: usize = 256;

/// A random nonce. The system random source is asked for 256 nonces at a time (per thread),
/// not for each field: one call cost as much as the encryption of a field. Each byte is used
/// once; nonces are public, so the pool holds nothing secret.
fn fresh_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    thread_local! {
        static POOL: std::cell::RefCell<(Vec<u8>, usize)> = const { std::cell::RefCell::new((Vec::new(), 0)) };
    }
    POOL.with_borrow_mut(|(bytes, used)| {
        if *used == bytes.len() {
            bytes.resize(NONCE_LEN * NONCES_PER_DRAW, 0);
            SystemRandom::new()
                .fill(bytes)
                .map_err(|_| CryptoError::Random)?;
            *used = 0;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[*used..*used + NONCE_LEN]);
        *used += NONCE_LEN;
        Ok(nonce)
    })
}

fn seal(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce = fresh_nonce()?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| CryptoError::Random)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Format);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Format)?;
    let mut body = body.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad), &mut body)
        .map_err(|_| CryptoError::Authentication)?;
    Ok(plain.to_vec())
}

fn field_aad(user: Uuid, field: &str, key_version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(FIELD_AAD.len() + 64 + field.len());
    aad.extend_from_slice(FIELD_AAD);
    aad.push(0);
    aad.extend_from_slice(
        user.hyphenated()
            .encode_lower(&mut Uuid::encode_buffer())
            .as_bytes(),
    );
    aad.push(0);
    aad.extend_from_slice(field.as_bytes());
    aad.push(0);
    write!(aad, "{key_version}").expect("writing to a Vec cannot fail");
    aad
}

fn key_aad(user: Uuid, key_version: u32) -> Vec<u8> {
    owner_aad(KEY_AAD, user, key_version)
}

fn owner_aad(prefix: &[u8], user: Uuid, key_version: u32) -> Vec<u8> {
    let mut aad = prefix.to_vec();
    aad.push(0);
    aad.extend_from_slice(user.hyphenated().to_string().as_bytes());
    aad.push(0);
    aad.extend_from_slice(key_version.to_string().as_bytes());
    aad
}

/// Encrypts one field value (its JSON text) for `user` under their data key.
pub fn seal_field(
    key: &DataKey,
    user: Uuid,
    field: &str,
    key_version: u32,
    plaintext: &[u8],
) -> Result<String, CryptoError> {
    let sealed = seal(&key.aead, &field_aad(user, field, key_version), plaintext)?;
    let mut text = String::with_capacity(FIELD_FORMAT.len() + 12 + sealed.len() * 4 / 3 + 4);
    write!(text, "{FIELD_FORMAT}.{key_version}.").expect("writing to a String cannot fail");
    URL_SAFE_NO_PAD.encode_string(sealed, &mut text);
    Ok(text)
}

/// Decrypts a field ciphertext; fails if it was sealed for another user, field or key version.
pub fn open_field(
    key: &DataKey,
    user: Uuid,
    field: &str,
    ciphertext: &str,
) -> Result<Vec<u8>, CryptoError> {
    let mut parts = ciphertext.splitn(3, '.');
    let (Some(FIELD_FORMAT), Some(version), Some(body)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(CryptoError::Format);
    };
    let key_version: u32 = version.parse().map_err(|_| CryptoError::Format)?;
    let sealed = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| CryptoError::Format)?;
    open(&key.aead, &field_aad(user, field, key_version), &sealed)
}

/// Encrypts a dead letter's payload under the data key of `owner` (a user, or a dead-letter
/// key's owner id).
pub fn seal_letter(
    key: &DataKey,
    owner: Uuid,
    key_version: u32,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    seal(
        &key.aead,
        &owner_aad(LETTER_AAD, owner, key_version),
        plaintext,
    )
}

/// Decrypts a dead letter's payload; fails if it was sealed under another owner or version.
pub fn open_letter(
    key: &DataKey,
    owner: Uuid,
    key_version: u32,
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    open(
        &key.aead,
        &owner_aad(LETTER_AAD, owner, key_version),
        sealed,
    )
}

/// Seals a key of the local keyring (a KEK, the blind-index key) under the master key.
pub fn seal_keyring_key(master: &DataKey, id: &str, key: &DataKey) -> Result<Vec<u8>, CryptoError> {
    seal(&master.aead, &keyring_aad(id), key.expose())
}

pub fn open_keyring_key(master: &DataKey, id: &str, sealed: &[u8]) -> Result<DataKey, CryptoError> {
    let plain = Zeroizing::new(open(&master.aead, &keyring_aad(id), sealed)?);
    DataKey::from_slice(&plain)
}

fn keyring_aad(id: &str) -> Vec<u8> {
    let mut aad = KEYRING_AAD.to_vec();
    aad.push(0);
    aad.extend_from_slice(id.as_bytes());
    aad
}

/// Wraps a user's data key under a key-encryption key.
pub fn wrap_data_key(
    kek: &DataKey,
    user: Uuid,
    key_version: u32,
    dek: &DataKey,
) -> Result<Vec<u8>, CryptoError> {
    seal(&kek.aead, &key_aad(user, key_version), dek.expose())
}

pub fn unwrap_data_key(
    kek: &DataKey,
    user: Uuid,
    key_version: u32,
    wrapped: &[u8],
) -> Result<DataKey, CryptoError> {
    let plain = Zeroizing::new(open(&kek.aead, &key_aad(user, key_version), wrapped)?);
    DataKey::from_slice(&plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_never_repeat_across_refills_of_the_pool() {
        let count = NONCES_PER_DRAW * 4 + 7;
        let nonces: std::collections::HashSet<[u8; NONCE_LEN]> =
            (0..count).map(|_| fresh_nonce().unwrap()).collect();
        assert_eq!(nonces.len(), count);
    }

    #[test]
    fn a_ciphertext_moved_to_another_user_or_field_fails_to_decrypt() {
        let key = DataKey::generate().unwrap();
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = seal_field(&key, alice, "email", 1, b"\"a@x.example\"").unwrap();
        assert_eq!(
            open_field(&key, alice, "email", &sealed).unwrap(),
            b"\"a@x.example\""
        );
        assert_eq!(
            open_field(&key, bob, "email", &sealed),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            open_field(&key, alice, "phone", &sealed),
            Err(CryptoError::Authentication)
        );
        let other_version = sealed.replacen("v1.1.", "v1.2.", 1);
        assert_eq!(
            open_field(&key, alice, "email", &other_version),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn a_wrapped_key_only_unwraps_for_its_user() {
        let (kek, dek) = (DataKey::generate().unwrap(), DataKey::generate().unwrap());
        let user = Uuid::new_v4();
        let wrapped = wrap_data_key(&kek, user, 1, &dek).unwrap();
        assert_eq!(
            unwrap_data_key(&kek, user, 1, &wrapped).unwrap().expose(),
            dek.expose()
        );
        assert!(unwrap_data_key(&kek, Uuid::new_v4(), 1, &wrapped).is_err());
    }

    #[test]
    fn a_sealed_dead_letter_opens_only_for_its_owner_and_version() {
        let key = DataKey::generate().unwrap();
        let owner = Uuid::new_v4();
        let sealed = seal_letter(&key, owner, 1, b"{\"email\":\"a@x.example\"}").unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"a@x.examp"));
        assert_eq!(
            open_letter(&key, owner, 1, &sealed).unwrap(),
            b"{\"email\":\"a@x.example\"}"
        );
        assert!(open_letter(&key, Uuid::new_v4(), 1, &sealed).is_err());
        assert!(open_letter(&key, owner, 2, &sealed).is_err());
        assert!(open_letter(&key, owner, 1, &sealed[..20]).is_err());
    }

    #[test]
    fn garbage_is_a_format_error_not_a_panic() {
        let key = DataKey::generate().unwrap();
        for junk in [
            "",
            "v1",
            "v1.x.abc",
            "v1.1.!!!",
            "v1.1.AAAA",
            "v2.1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(
                open_field(&key, Uuid::nil(), "email", junk).is_err(),
                "{junk}"
            );
        }
    }
}
