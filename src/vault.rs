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
    let census = Census::of(store, None)?;
    let ring = match file.load()? {
        Some(ring) => ring,
        None => {
            if let Some((owner, kid)) = census.sealed.first() {
                return Err(file.error(format!(
                    "does not exist, and the secret of {owner} {}is encrypted with key {kid}: \
                     restore the key file from your backup (or point --key-file / \
                     WXTOKEN_KEY_FILE at it); if it is lost, set each secret again with \
                     `wxtoken account set-secret`",
                    match census.sealed.len() {
                        1 => String::new(),
                        n => format!("(and {} more) ", n - 1),
                    },
                )));
            }
            if census.plaintext == 0 {
                if will_store {
                    *CREATE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file.clone());
                }
                return Ok(());
            }
            file.create()?
        }
    };
    let kid = ring.current().kid.clone();
    install(ring);
    if census.plaintext > 0 {
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
    if let Some((owner, kid)) = Census::of(store, except)?.sealed.first() {
        return Err(file.error(format!(
            "does not open the secret of {owner} (key {kid}): either it is not the key file \
             that encrypted it, or the stored value was copied from another account or \
             damaged; restore the right key file, or set the secret again with `wxtoken \
             account set-secret`"
        )));
    }
    Ok(())
}

/// A secret that stayed locked after `unlock` was forgotten with a lost key (`key reset`):
/// one line saying what to do, exiting 7, instead of sending WeChat an empty secret.
pub fn require_open(account: &Account) -> Result<()> {
    if account.secret.locked_kid().is_none() {
        return Ok(());
    }
    Err(fail(
        Exit::Key,
        format!(
            "the secret of {} was forgotten with its lost key (wxtoken key reset); set it \
             again with `wxtoken account set-secret`",
            account.key
        ),
    ))
}

/// What the store holds: how many secrets are in plain text, and which stay locked (whose,
/// and under which key).
struct Census {
    plaintext: usize,
    sealed: Vec<(String, String)>,
}

impl Census {
    /// `except`: an account whose secret is left out (it is about to be replaced).
    fn of(store: &dyn Store, except: Option<&AccountKey>) -> Result<Census> {
        let mut census = Census {
            plaintext: 0,
            sealed: Vec::new(),
        };
        let mut count = |owner: String, secret: &Secret| match secret.locked_kid() {
            // Forgotten with a lost key (`key reset`): no key opens it, none is needed.
            Some(crate::crypto::LOST_KID) => {}
            Some(kid) => census.sealed.push((owner, kid.to_string())),
            // Before the keys are loaded, an open secret is a plaintext one; after, it may
            // be either, and `reseal` tells them apart.
            None => census.plaintext += 1,
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
