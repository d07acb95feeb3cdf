//! The key file and the store together: what the commands that use a secret (`refresh`,
//! `get --reject`, `account add`, `account set-secret`, `quota reset`, the sink commands
//! that store or use a password) do before touching one. Plain `get`, `status`,
//! `account list` and `prune` never come here, and never read the key.
//!
//! The keys are a value, not process state: unlocking loads the key file into the keys of
//! the store being unlocked (`Store::keys`), the store seals and opens with those, and
//! `key rotate` and `store copy` hand theirs to the store they write.

use anyhow::Result;

use crate::domain::{Account, AccountKey, Secret};
use crate::exit::{Exit, fail};
use crate::keyfile::KeyFile;
use crate::store::Store;

/// Loads the key file into `store`'s keys, creating it when it does not exist, a key is
/// needed (plaintext
/// secrets to encrypt, or `will_store` a new secret) and no secret is encrypted yet: once
/// one is, a missing key file is an error, never a new key. Encrypts every plaintext
/// secret left by an earlier version (in one transaction, scrubbing the file), then
/// checks that the key opens every stored secret, so that nothing is claimed, fetched or
/// written with a wrong key.
pub fn unlock(
    store: &dyn Store,
    file: &KeyFile,
    will_store: bool,
    except: Option<&AccountKey>,
) -> Result<()> {
    let census = load_and_count(store, file, will_store, except)?;
    if let Some((owner, kid)) = census.sealed.first() {
        return Err(does_not_open(file, owner, kid));
    }
    Ok(())
}

/// `unlock` for `refresh`: a secret that does not open holds its own account (`refresh`
/// reports it and fetches the others), unless no sealed secret opens at all: then it is
/// the wrong key file, and nothing is tried.
///
/// Without reading every secret when it can: a store with no plain-text secret left whose
/// key file opens one stored secret (found without reading the others) has the right key
/// file, and each account whose own secret does not open is reported as it is read
/// (`why_locked`). At 100,000 tenants, reading every secret first cost seconds and held
/// them all in memory. Otherwise (secrets in plain text to encrypt, no key file, a sample
/// that does not open) it counts every secret, as before.
pub fn unlock_for_refresh(store: &dyn Store, file: &KeyFile) -> Result<()> {
    if !store.has_plaintext()?
        && let (Some(ring), Some(sample)) = (file.load()?, store.sealed_sample(None)?)
    {
        let stored = crate::crypto::Stored::new(sample.stored);
        if ring.open(&sample.owner, &stored).is_ok() {
            store.keys().remember(file);
            store.keys().install(ring);
            return Ok(());
        }
    }
    let census = load_and_count(store, file, false, None)?;
    match census.sealed.first() {
        Some((owner, kid)) if census.opened == 0 => Err(does_not_open(file, owner, kid)),
        _ => Ok(()),
    }
}

/// For `account add` and `set-secret`, before the secret is read, so that nobody types it
/// for nothing: that the key file opens what is stored, encrypting plaintext secrets of an
/// earlier version first. `load_for_sealing` checks again under the secrets lock.
pub fn check_for_writing(
    store: &dyn Store,
    file: &KeyFile,
    except: Option<&AccountKey>,
) -> Result<()> {
    if store.has_plaintext()? {
        // Once per database: every secret is opened and encrypted.
        return store.with_secrets_lock(&mut || unlock(store, file, true, except));
    }
    load_for_sealing(store, file, except)
}

/// Loads the key file that a new secret is sealed with, and checks it against one stored
/// secret (not every one: adding an account costs the same at any size). Called under the
/// secrets lock (`Store::with_secrets_lock`), so that `key rotate` cannot drop the key
/// between this read and the commit of the new secret. With no key file and no secret
/// encrypted, the first secret sealed creates it.
pub fn load_for_sealing(
    store: &dyn Store,
    file: &KeyFile,
    except: Option<&AccountKey>,
) -> Result<()> {
    store.keys().remember(file);
    let sample = store.sealed_sample(except)?;
    match (file.load()?, sample) {
        (Some(ring), sample) => {
            if let Some(sample) = sample {
                let stored = crate::crypto::Stored::new(sample.stored);
                if ring.open(&sample.owner, &stored).is_err() {
                    let kid = stored.kid().unwrap_or("unknown").to_string();
                    return Err(does_not_open(file, &sample.whose, &kid));
                }
            }
            store.keys().install(ring);
        }
        (None, Some(sample)) => {
            let kid = crate::crypto::Stored::new(sample.stored)
                .kid()
                .unwrap_or("unknown")
                .to_string();
            return Err(missing(file, &sample.whose, &kid, 0));
        }
        (None, None) => store.keys().create_on_first_seal(file),
    }
    Ok(())
}

/// `key rotate`'s last step, under the secrets lock: leaves in the key file the sealing
/// key and every key a stored secret still names. Returns whether it dropped any.
pub fn drop_unused_keys(store: &dyn Store, file: &KeyFile) -> Result<bool> {
    let Some(ring) = file.load()? else {
        return Ok(false);
    };
    let named = store.sealed_kids()?;
    let kept = ring.keeping(|kid| named.contains(kid));
    if kept.key_count() == ring.key_count() {
        return Ok(false);
    }
    file.replace(&kept, false)?;
    store.keys().install(kept);
    Ok(true)
}

/// Loads (or creates, see `unlock`) the key file, encrypts plaintext secrets, and counts
/// which stored secrets open and which do not.
fn load_and_count(
    store: &dyn Store,
    file: &KeyFile,
    will_store: bool,
    except: Option<&AccountKey>,
) -> Result<Census> {
    store.keys().remember(file);
    let census = Census::of(store, None)?;
    let ring = match file.load()? {
        Some(ring) => ring,
        None => {
            if let Some((owner, kid)) = census.sealed.first() {
                return Err(missing(file, owner, kid, census.sealed.len() - 1));
            }
            if census.opened == 0 {
                if will_store {
                    store.keys().create_on_first_seal(file);
                } else {
                    store.keys().set_loaded();
                }
                return Census::of(store, except);
            }
            file.create()?
        }
    };
    let kid = ring.current().kid.clone();
    store.keys().install(ring);
    if census.opened > 0 {
        let n = store.reseal(false)?;
        // Another process may have encrypted them first, under the write lock.
        if n > 0 {
            eprintln!(
                "wxtoken: encrypted {n} secret(s) stored in plain text by an earlier version, \
                 with key {kid} from {}",
                file.path.display()
            );
        }
    }
    Census::of(store, except)
}

fn missing(file: &KeyFile, owner: &str, kid: &str, more: usize) -> anyhow::Error {
    file.error(format!(
        "does not exist, and the secret of {owner} {}is encrypted with key {kid}: \
         restore the key file from your backup (or point --key-file / \
         WXTOKEN_KEY_FILE at it); if it is lost, set each secret again with \
         `wxtoken account set-secret`",
        match more {
            0 => String::new(),
            n => format!("(and {n} more) "),
        },
    ))
}

fn does_not_open(file: &KeyFile, owner: &str, kid: &str) -> anyhow::Error {
    file.error(format!(
        "does not open the secret of {owner} (key {kid}): either it is not the key file \
         that encrypted it, or the stored value was copied from another account or \
         damaged; restore the right key file, or set the secret again with `wxtoken \
         account set-secret`"
    ))
}

/// A secret that stayed locked after `unlock` was forgotten with a lost key (`key reset`):
/// one line saying what to do, exiting 7, instead of sending WeChat an empty secret.
pub fn require_open(account: &Account) -> Result<()> {
    if account.secret.is_unread() {
        return Err(fail(Exit::Key, unread(account)));
    }
    match account.secret.locked_kid() {
        None => Ok(()),
        Some(_) => Err(fail(Exit::Key, lost(account))),
    }
}

/// Why `refresh` cannot fetch an account with its secret, if it cannot: the secret was
/// forgotten with a lost key (`key reset`), or is sealed with a key the key file does not
/// hold, or does not open with it. One line naming the account and what to do.
pub fn why_locked(account: &Account, file: &KeyFile) -> Option<String> {
    if account.secret.is_unread() {
        return Some(unread(account));
    }
    match account.secret.locked_kid()? {
        crate::crypto::LOST_KID => Some(lost(account)),
        kid => Some(format!(
            "the secret of {} (key {kid}) does not open with the key file {}, so it is not \
             fetched: restore the key file that encrypted it, or set the secret again with \
             `wxtoken account set-secret`",
            account.key,
            file.path.display()
        )),
    }
}

/// A secret read before the key file was loaded: the command skipped `unlock`.
fn unread(account: &Account) -> String {
    format!(
        "the secret of {} was read before the key file was loaded, so it cannot be used \
         (a bug: this command should unlock the key file first)",
        account.key
    )
}

fn lost(account: &Account) -> String {
    format!(
        "the secret of {} was forgotten with its lost key (wxtoken key reset); set it again \
         with `wxtoken account set-secret`",
        account.key
    )
}

/// What the store holds: how many secrets open (before the keys are loaded: how many are
/// in plain text), and which stay locked (whose, and under which key).
struct Census {
    opened: usize,
    sealed: Vec<(String, String)>,
}

impl Census {
    /// `except`: an account whose secret is left out (it is about to be replaced).
    fn of(store: &dyn Store, except: Option<&AccountKey>) -> Result<Census> {
        let mut census = Census {
            opened: 0,
            sealed: Vec::new(),
        };
        let mut count = |owner: String, secret: &Secret| match secret.locked_kid() {
            // Forgotten with a lost key (`key reset`): no key opens it, none is needed.
            Some(crate::crypto::LOST_KID) => {}
            Some(kid) => census.sealed.push((owner, kid.to_string())),
            // Before the keys are loaded, an open secret is a plaintext one; after, it may
            // be either, and `reseal` tells them apart.
            None => census.opened += 1,
        };
        for a in store.accounts()? {
            if Some(&a.key) == except {
                continue;
            }
            count(format!("account {}", a.key), &a.secret);
        }
        for s in store.sinks()? {
            if let Some(p) = &s.password {
                count(format!("sink {}", s.name), p);
            }
        }
        Ok(census)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keyring;
    use crate::domain::{Api, NewAccount};
    use crate::store::{Location, open_write};

    fn fresh_store(name: &str) -> (Location, Box<dyn Store>) {
        let dir = std::env::temp_dir().join(format!("wxtoken-vault-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let at = Location::File {
            path: dir.join("wxtoken.db"),
            is_default: false,
        };
        let store = open_write(&at, true).unwrap();
        (at, store)
    }

    fn add(store: &dyn Store, appid: &str, secret: &str) -> AccountKey {
        let key = AccountKey::appid(appid).unwrap();
        let new = NewAccount {
            key: key.clone(),
            api: Api::Token,
            secret: Secret::new(secret.into()),
            tickets: vec![],
            platform: None,
            receiver: None,
        };
        store.add_account(&new, 1).unwrap();
        key
    }

    #[test]
    fn a_secret_read_without_the_key_is_an_error_to_use() {
        let (at, store) = fresh_store("unread");
        let ring = Keyring::new(vec![crate::crypto::Key::generate()]);
        store.keys().install(ring.clone());
        let key = add(store.as_ref(), "wx1", "s3cret");
        assert_eq!(
            store.require_account(&key).unwrap().secret.expose(),
            "s3cret"
        );

        // Another handle on the same database, never given the keys: the secret is not
        // opened, and using it is a one-line error exiting 7, not an empty secret.
        let other = open_write(&at, false).unwrap();
        let account = other.require_account(&key).unwrap();
        assert!(account.secret.is_unread());
        assert_eq!(account.secret.expose(), "");
        let err = require_open(&account).unwrap_err();
        assert_eq!(crate::exit::of(&err), Exit::Key);
        let line = format!("{err:#}");
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("read before the key file was loaded"),
            "{line}"
        );
        let file = KeyFile::locate(Some(std::path::PathBuf::from("/nonexistent/k"))).unwrap();
        assert!(why_locked(&account, &file).is_some());

        // Given the same ring, it opens; given another one, it stays locked (not unread).
        other.keys().install(ring);
        let account = other.require_account(&key).unwrap();
        assert!(require_open(&account).is_ok());
        assert_eq!(account.secret.expose(), "s3cret");
        let third = open_write(&at, false).unwrap();
        third
            .keys()
            .install(Keyring::new(vec![crate::crypto::Key::generate()]));
        let account = third.require_account(&key).unwrap();
        assert!(!account.secret.is_unread());
        assert!(account.secret.locked_kid().is_some());
    }

    #[test]
    fn two_stores_hold_two_key_rings() {
        let (_, a) = fresh_store("ring-a");
        let (_, b) = fresh_store("ring-b");
        a.keys()
            .install(Keyring::new(vec![crate::crypto::Key::generate()]));
        b.keys()
            .install(Keyring::new(vec![crate::crypto::Key::generate()]));
        let ka = add(a.as_ref(), "wxa", "sa");
        let kb = add(b.as_ref(), "wxb", "sb");
        assert_eq!(a.require_account(&ka).unwrap().secret.expose(), "sa");
        assert_eq!(b.require_account(&kb).unwrap().secret.expose(), "sb");
        let kid_a = a.keys().ring().unwrap().current().kid.clone();
        let kid_b = b.keys().ring().unwrap().current().kid.clone();
        assert_ne!(kid_a, kid_b);
    }
}
