//! The keys a store seals and opens secrets with, as a value the store holds. The key file
//! is read into them by `vault` (the unlock policies); the store only seals and opens
//! with them, so it depends on this module and never on `vault`.

use std::sync::{Arc, Mutex};

use crate::crypto::Keyring;
use crate::domain::Secret;
use crate::keyfile::KeyFile;

/// The keys a store seals and opens secrets with: a value each store holds, empty until
/// the command unlocks the key file into it (`vault::unlock`, `vault::load_for_sealing`).
/// A reader never gets any, and a store that reads a sealed secret without them marks it unread
/// (`Secret::is_unread`), so that using it is an error, never an empty secret.
/// Clones share one state: the handles a store opens for parallel workers (`opener`)
/// seal and open with the keys the command unlocked.
#[derive(Default, Clone)]
pub struct Keys(Arc<Mutex<KeyState>>);

#[derive(Default)]
struct KeyState {
    /// The unlocked ring, once loaded.
    ring: Option<Keyring>,
    /// Whether the key file was loaded (or found absent) for this store.
    loaded: bool,
    /// The key file to create when the first secret is sealed: set for a command that
    /// stores one while no key file exists (and no secret needs one). Created only then,
    /// so that a command refused before it stores anything leaves no key file behind.
    create: Option<KeyFile>,
    /// The key file the ring came from, to read again (`open`).
    file: Option<KeyFile>,
}

impl Keys {
    fn state(&self) -> std::sync::MutexGuard<'_, KeyState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the unlocked ring, if any.
    pub fn ring(&self) -> Option<Keyring> {
        self.state().ring.clone()
    }

    /// Replaces the keys (`key rotate`).
    pub fn install(&self, ring: Keyring) {
        let mut state = self.state();
        state.ring = Some(ring);
        state.loaded = true;
    }

    /// The key file was looked for and is absent, and nothing needs it.
    pub fn set_loaded(&self) {
        self.state().loaded = true;
    }

    pub fn remember(&self, file: &KeyFile) {
        self.state().file = Some(file.clone());
    }

    /// No key file and no secret encrypted: the first secret sealed creates it.
    pub fn create_on_first_seal(&self, file: &KeyFile) {
        let mut state = self.state();
        state.ring = None;
        state.loaded = true;
        state.create = Some(file.clone());
    }

    /// Seals a secret for `owner` with the current key, creating the key file first when
    /// `unlock` left that to the first secret.
    pub fn seal(&self, owner: &[u8], secret: &Secret) -> Result<String, String> {
        let mut state = self.state();
        if let Some(ring) = &state.ring {
            return Ok(ring.seal(owner, secret).as_str().to_string());
        }
        let Some(file) = state.create.take() else {
            return Err(
                "no key loaded to encrypt a secret with (a bug: this command should \
                        unlock the key file first)"
                    .to_string(),
            );
        };
        let ring = file.create().map_err(|e| format!("{e:#}"))?;
        let sealed = ring.seal(owner, secret);
        state.ring = Some(ring);
        Ok(sealed.as_str().to_string())
    }

    /// Opens a sealed secret. A key id the ring lacks may be a key that a `key rotate`
    /// running meanwhile put in the key file: the file is read again, once. Without keys
    /// loaded the secret comes back unread; with keys that do not open it, locked.
    pub fn open(&self, owner: &[u8], stored: &crate::crypto::Stored, kid: String) -> Secret {
        let mut state = self.state();
        if !state.loaded {
            return Secret::unread(kid);
        }
        match state.ring.as_ref().map(|ring| ring.open(owner, stored)) {
            Some(Ok(secret)) => return secret,
            Some(Err(crate::crypto::OpenError::UnknownKey(_))) => {}
            _ => return Secret::locked(kid),
        }
        let reread = state
            .file
            .as_ref()
            .and_then(|file| file.load().ok().flatten());
        let Some(ring) = reread else {
            return Secret::locked(kid);
        };
        match ring.open(owner, stored) {
            Ok(secret) => {
                state.ring = Some(ring);
                secret
            }
            Err(_) => Secret::locked(kid),
        }
    }
}

/// Unit tests that store secrets without a key file: a fresh key.
#[cfg(test)]
pub fn test_keys() -> Keys {
    let keys = Keys::default();
    keys.install(Keyring::new(vec![crate::crypto::Key::generate()]));
    keys
}
