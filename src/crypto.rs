//! Secrets at rest: XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`), keys with ids,
//! and the versioned text a secret is stored as. Pure: no files, no database.
//!
//! A stored secret is `wxs1:KID:HEX`, HEX being the 24-byte random nonce, the ciphertext
//! and the 16-byte tag. `wxs1` names the scheme, KID the key that sealed it, so that both
//! can change later. The associated data is the account's identity (appid and agent): a
//! ciphertext copied onto another account's row does not open. Anything without the
//! `wxs` prefix is a plaintext secret written by a version before encryption (WeChat and
//! WeCom secrets have no `:`).

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::domain::{AccountKey, Secret};

/// The prefix of every value this version seals.
pub const SCHEME: &str = "wxs1";
/// What `key reset` leaves in place of a secret whose key was lost.
pub const LOST: &str = "wxs0:lost";
/// The key id a forgotten secret shows as (`account list`: `LOST`).
pub const LOST_KID: &str = "LOST";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// One key: 4 random bytes of id (hex) and 32 random bytes.
#[derive(Clone)]
pub struct Key {
    pub kid: String,
    bytes: [u8; KEY_LEN],
}

impl Key {
    pub fn generate() -> Key {
        let mut bytes = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut bytes);
        let mut id = [0u8; 4];
        OsRng.fill_bytes(&mut id);
        Key {
            kid: hex(&id),
            bytes,
        }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.bytes).into())
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({}, ***)", self.kid)
    }
}

/// The keys of a key file: the first seals, every one opens.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<Key>,
}

/// Why a stored secret did not open. None of them says which part failed beyond this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Sealed with a key id the key file does not have.
    UnknownKey(String),
    /// The key id matches but the tag does not: another key under the same id, a value
    /// moved from another account, or a damaged value.
    Mismatch(String),
    /// Not a value this version understands (another scheme, bad hex, too short).
    Malformed,
    /// `key reset` forgot it: the key that sealed it was lost.
    Lost,
}

/// A stored secret as found in the database, not yet opened. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Stored(String);

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stored(***)")
    }
}

impl Stored {
    pub fn new(value: String) -> Stored {
        Stored(value)
    }

    /// The column value, for the store to write back.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A plaintext secret from a version before encryption.
    pub fn is_plaintext(&self) -> bool {
        !self.0.starts_with("wxs")
    }

    /// The key id of a sealed value.
    pub fn kid(&self) -> Option<&str> {
        let rest = self.0.strip_prefix(SCHEME)?.strip_prefix(':')?;
        rest.split_once(':').map(|(kid, _)| kid)
    }
}

impl Keyring {
    pub fn new(keys: Vec<Key>) -> Keyring {
        assert!(!keys.is_empty(), "a keyring has at least one key");
        Keyring { keys }
    }

    /// The key that seals.
    pub fn current(&self) -> &Key {
        &self.keys[0]
    }

    #[cfg(test)]
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_str()).collect()
    }

    /// A ring with a new sealing key in front of these ones.
    pub fn with_new_key(&self) -> Keyring {
        let mut keys = vec![Key::generate()];
        keys.extend(self.keys.iter().cloned());
        Keyring { keys }
    }

    /// The sealing key and the others that `keep` names: what `key rotate` leaves once no
    /// stored secret is sealed with the rest.
    pub fn keeping(&self, keep: impl Fn(&str) -> bool) -> Keyring {
        let rest = self.keys[1..].iter().filter(|k| keep(&k.kid)).cloned();
        Keyring {
            keys: std::iter::once(self.keys[0].clone()).chain(rest).collect(),
        }
    }

    /// How many keys it holds.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Parses a key file: one `KID HEX` line per key (8 and 64 hex digits), the first one
    /// sealing; blank lines and `#` comments are ignored. The error never quotes the file.
    pub fn parse(text: &str) -> Result<Keyring, String> {
        let mut keys: Vec<Key> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || format!("line {} is not `KID HEX` (8 and 64 hex digits)", n + 1);
            let (kid, key) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
            let key = key.trim();
            let id = unhex(kid).filter(|b| b.len() == 4).ok_or_else(bad)?;
            let bytes: [u8; KEY_LEN] =
                unhex(key).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
            let kid = hex(&id);
            if keys.iter().any(|k| k.kid == kid) {
                return Err(format!("key id {kid} appears twice"));
            }
            keys.push(Key { kid, bytes });
        }
        if keys.is_empty() {
            return Err("it holds no key".to_string());
        }
        Ok(Keyring { keys })
    }

    /// The key file's text.
    pub fn to_text(&self) -> String {
        let mut text = String::from(
            "# wxtoken secret keys: KID HEX per line; the first seals, all open. Back this up.\n",
        );
        for k in &self.keys {
            text += &format!("{} {}\n", k.kid, hex(&k.bytes));
        }
        text
    }

    /// Seals a secret for one account with the current key and a fresh random nonce.
    pub fn seal(&self, owner: &[u8], secret: &Secret) -> Stored {
        let key = self.current();
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = key
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.expose().as_bytes(),
                    aad: &aad(owner),
                },
            )
            .expect("XChaCha20-Poly1305 encryption of a short secret cannot fail");
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&sealed);
        Stored(format!("{SCHEME}:{}:{}", key.kid, hex(&raw)))
    }

    /// Opens a sealed secret of `account`. A plaintext one is returned as it is.
    pub fn open(&self, owner: &[u8], stored: &Stored) -> Result<Secret, OpenError> {
        if stored.0 == LOST {
            return Err(OpenError::Lost);
        }
        if stored.is_plaintext() {
            return Ok(Secret::new(stored.0.clone()));
        }
        let rest = stored
            .0
            .strip_prefix(SCHEME)
            .and_then(|r| r.strip_prefix(':'))
            .ok_or(OpenError::Malformed)?;
        let (kid, body) = rest.split_once(':').ok_or(OpenError::Malformed)?;
        let raw = unhex(body)
            .filter(|r| r.len() > NONCE_LEN + TAG_LEN)
            .ok_or(OpenError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| OpenError::UnknownKey(kid.to_string()))?;
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let plain = key
            .cipher()
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad(owner),
                },
            )
            .map_err(|_| OpenError::Mismatch(kid.to_string()))?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| OpenError::Malformed)
    }
}

/// Binds a ciphertext to one account. Not the row id: ids change when a database is
/// copied or rebuilt, the account's identity does not.
fn aad(owner: &[u8]) -> Vec<u8> {
    let mut aad = b"wxtoken/secret/v1\0".to_vec();
    aad.extend_from_slice(owner);
    aad
}

/// The owner of an account's secret: `appid\0agent`.
pub fn account_owner(account: &AccountKey) -> Vec<u8> {
    let mut owner = account.appid.as_bytes().to_vec();
    owner.push(0);
    owner.extend_from_slice(account.agent.as_bytes());
    owner
}

/// The owner of a platform's other sealed values (`ticket`, `token`, `aes_key`):
/// `APPID\0AGENT\0WHAT`, so that none can be moved into another column or account.
pub fn platform_owner(account: &AccountKey, what: &str) -> Vec<u8> {
    let mut owner = account_owner(account);
    owner.push(0);
    owner.extend_from_slice(what.as_bytes());
    owner
}

/// The owner of a sink's password: `sink\0NAME`; no appid contains a NUL, so it can never
/// be an account's.
pub fn sink_owner(name: &str) -> Vec<u8> {
    let mut owner = b"sink\0".to_vec();
    owner.extend_from_slice(name.as_bytes());
    owner
}

/// `n` random bytes as hex: names nobody can guess (the key file's temporary files).
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(appid: &str, agent: &str) -> Vec<u8> {
        account_owner(&AccountKey {
            appid: appid.into(),
            agent: agent.into(),
        })
    }

    #[test]
    fn seal_then_open_round_trips_and_hides_the_secret() {
        let ring = Keyring::new(vec![Key::generate()]);
        let a = account("wx1", "");
        let secret = Secret::new("0123456789abcdef0123456789abcdef".into());
        let stored = ring.seal(&a, &secret);
        assert!(!stored.as_str().contains("0123456789abcdef"));
        assert!(
            stored
                .as_str()
                .starts_with(&format!("wxs1:{}:", ring.current().kid))
        );
        assert_eq!(stored.kid(), Some(ring.current().kid.as_str()));
        assert!(!stored.is_plaintext());
        assert_eq!(ring.open(&a, &stored).unwrap(), secret);
        // A fresh nonce every time: the same secret never seals to the same text.
        assert_ne!(ring.seal(&a, &secret), stored);
    }

    #[test]
    fn a_ciphertext_does_not_open_on_another_account() {
        let ring = Keyring::new(vec![Key::generate()]);
        let stored = ring.seal(&account("wx1", ""), &Secret::new("s".into()));
        let kid = ring.current().kid.clone();
        for other in [
            account("wx2", ""),
            account("wx1", "1000002"),
            account("wx", "1"),
        ] {
            assert_eq!(
                ring.open(&other, &stored),
                Err(OpenError::Mismatch(kid.clone()))
            );
        }
    }

    #[test]
    fn wrong_or_unknown_keys_and_damage_are_told_apart() {
        let ring = Keyring::new(vec![Key::generate()]);
        let a = account("wx1", "");
        let stored = ring.seal(&a, &Secret::new("s".into()));
        let other = Keyring::new(vec![Key::generate()]);
        assert!(matches!(
            other.open(&a, &stored),
            Err(OpenError::UnknownKey(_))
        ));
        // Same id, other bytes: the tag fails.
        let mut same_id = Key::generate();
        same_id.kid = ring.current().kid.clone();
        assert!(matches!(
            Keyring::new(vec![same_id]).open(&a, &stored),
            Err(OpenError::Mismatch(_))
        ));
        let mut flipped = stored.as_str().to_string();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '0' { '1' } else { '0' });
        assert!(matches!(
            ring.open(&a, &Stored::new(flipped)),
            Err(OpenError::Mismatch(_))
        ));
        for bad in [
            "wxs1:",
            "wxs1:abcd",
            "wxs1:abcd:zz",
            "wxs9:abcd:00",
            "wxs1:abcd:00",
        ] {
            assert_eq!(
                ring.open(&a, &Stored::new(bad.into())),
                Err(OpenError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            ring.open(&a, &Stored::new(LOST.into())),
            Err(OpenError::Lost)
        );
    }

    #[test]
    fn plaintext_from_older_versions_is_recognised() {
        let ring = Keyring::new(vec![Key::generate()]);
        let legacy = Stored::new("0123456789abcdef0123456789abcdef".into());
        assert!(legacy.is_plaintext());
        assert_eq!(
            ring.open(&account("wx1", ""), &legacy).unwrap().expose(),
            "0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn key_file_text_round_trips_and_every_key_opens() {
        let old = Keyring::new(vec![Key::generate()]);
        let a = account("ww1", "1000002");
        let sealed_old = old.seal(&a, &Secret::new("old".into()));
        let rotated = old.with_new_key();
        let parsed = Keyring::parse(&rotated.to_text()).unwrap();
        assert_eq!(parsed.kids(), rotated.kids());
        assert_ne!(parsed.current().kid, old.current().kid);
        assert_eq!(parsed.open(&a, &sealed_old).unwrap().expose(), "old");
        let sealed_new = parsed.seal(&a, &Secret::new("new".into()));
        assert_eq!(sealed_new.kid(), Some(parsed.current().kid.as_str()));
        assert!(matches!(
            old.open(&a, &sealed_new),
            Err(OpenError::UnknownKey(_))
        ));
        assert_eq!(
            parsed.keeping(|_| false).kids(),
            vec![parsed.current().kid.as_str()]
        );
        assert_eq!(parsed.keeping(|_| true).kids(), parsed.kids());
    }

    #[test]
    fn bad_key_files_are_refused_without_quoting_them() {
        let key = "ab".repeat(32);
        for (text, want) in [
            ("", "holds no key"),
            ("# only a comment\n", "holds no key"),
            ("0011223", "line 1"),
            (&format!("001122 {key}"), "line 1"),
            (&format!("\n00112233 {}", &key[..62]), "line 2"),
            (&format!("00112233 {key}\n00112233 {key}\n"), "twice"),
        ] {
            let err = Keyring::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains(&key[..16]), "{err}");
        }
        assert!(Keyring::parse(&format!("# c\n\n00112233  {key}\n")).is_ok());
    }
}
