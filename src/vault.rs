//! The key file and the store together: what the commands that use a secret (`refresh`,
//! `get --reject`, `account add`, `account set-secret`, `quota reset`, the sink commands
//! that store or use a password) do before touching one. Plain `get`, `status`,
//! `account list` and `prune` never come here, and never read the key.

use std::sync::{Mutex, RwLock};

use anyhow::Result;

use crate::crypto::Keyring;
use crate::domain::{Account, AccountKey, Secret};
use crate::exit::{Exit, fail};
use crate::keyfile::KeyFile;
use crate::store::Store;

/// The process's keys, once unlocked: the store seals and opens secrets with them. One
/// process serves one database with one key file, so one ring for the process.
static KEYS: RwLock<Option<Keyring>> = RwLock::new(None);

/// Runs `f` with the unlocked keys, if any.
pub fn with_keys<T>(f: impl FnOnce(Option<&Keyring>) -> T) -> T {
    let keys = KEYS.read().unwrap_or_else(|e| e.into_inner());
    f(keys.as_ref())
}

/// The key file to create when the first secret is sealed: set by `unlock` for a command
/// that stores one while no key file exists (and no secret needs one). Created only then,
/// so that a command refused before it stores anything leaves no key file behind.
static CREATE: Mutex<Option<KeyFile>> = Mutex::new(None);

/// Seals a secret for `owner` with the current key, creating the key file first when
/// `unlock` left that to the first secret.
pub fn seal(owner: &[u8], secret: &Secret) -> Result<String, String> {
    if let Some(sealed) = with_keys(|keys| keys.map(|ring| ring.seal(owner, secret))) {
        return Ok(sealed.as_str().to_string());
    }
    let file = CREATE.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(file) = file else {
        return Err(
            "no key loaded to encrypt a secret with (a bug: this command should \
                    unlock the key file first)"
                .to_string(),
        );
    };
    let ring = file.create().map_err(|e| format!("{e:#}"))?;
    let sealed = ring.seal(owner, secret);
    install(ring);
    Ok(sealed.as_str().to_string())
}

/// Unit tests that store secrets without a key file: a fresh key for the test process.
#[cfg(test)]
pub fn install_test_key() {
    let mut keys = KEYS.write().unwrap_or_else(|e| e.into_inner());
    if keys.is_none() {
        *keys = Some(Keyring::new(vec![crate::crypto::Key::generate()]));
    }
}

/// Replaces the process's keys (`key rotate`).
pub fn install(ring: Keyring) {
    *KEYS.write().unwrap_or_else(|e| e.into_inner()) = Some(ring);
}

/// Loads the key file, creating it when it does not exist, a key is needed (plaintext
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
pub fn unlock_for_refresh(store: &dyn Store, file: &KeyFile) -> Result<()> {
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
    remember(file);
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
            install(ring);
        }
        (None, Some(sample)) => {
            let kid = crate::crypto::Stored::new(sample.stored)
                .kid()
                .unwrap_or("unknown")
                .to_string();
            return Err(missing(file, &sample.whose, &kid, 0));
        }
        (None, None) => {
            *KEYS.write().unwrap_or_else(|e| e.into_inner()) = None;
            *CREATE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file.clone());
        }
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
    install(kept);
    Ok(true)
}

/// Opens a sealed secret with the process's keys. A key id they lack may be a key that a
/// `key rotate` running meanwhile put in the key file: the file is read again, once.
pub fn open(owner: &[u8], stored: &crate::crypto::Stored) -> Option<Secret> {
    let opened = with_keys(|keys| keys.map(|ring| ring.open(owner, stored)));
    match opened {
        Some(Ok(secret)) => return Some(secret),
        Some(Err(crate::crypto::OpenError::UnknownKey(_))) => {}
        _ => return None,
    }
    let file = FILE.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
    let ring = file.load().ok()??;
    let secret = ring.open(owner, stored).ok()?;
    install(ring);
    Some(secret)
}

/// The key file this process read its keys from, to read again (`open`).
static FILE: Mutex<Option<KeyFile>> = Mutex::new(None);

fn remember(file: &KeyFile) {
    *FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file.clone());
}

/// Loads (or creates, see `unlock`) the key file, encrypts plaintext secrets, and counts
/// which stored secrets open and which do not.
fn load_and_count(
    store: &dyn Store,
    file: &KeyFile,
    will_store: bool,
    except: Option<&AccountKey>,
) -> Result<Census> {
    remember(file);
    let census = Census::of(store, None)?;
    let ring = match file.load()? {
        Some(ring) => ring,
        None => {
            if let Some((owner, kid)) = census.sealed.first() {
                return Err(missing(file, owner, kid, census.sealed.len() - 1));
            }
            if census.opened == 0 {
                if will_store {
                    *CREATE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file.clone());
                }
                return Census::of(store, except);
            }
            file.create()?
        }
    };
    let kid = ring.current().kid.clone();
    install(ring);
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
    match account.secret.locked_kid() {
        None => Ok(()),
        Some(_) => Err(fail(Exit::Key, lost(account))),
    }
}

/// Why `refresh` cannot fetch an account with its secret, if it cannot: the secret was
/// forgotten with a lost key (`key reset`), or is sealed with a key the key file does not
/// hold, or does not open with it. One line naming the account and what to do.
pub fn why_locked(account: &Account, file: &KeyFile) -> Option<String> {
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
