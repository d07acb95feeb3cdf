//! `wxtoken key rotate`: every secret under a new key, the key file replaced atomically;
//! `wxtoken key reset`: the key is lost, forget what it encrypted.

use anyhow::Result;

use super::Context;
use crate::cli::KeyCommand;
use crate::exit::{Exit, fail};
use crate::vault;

pub fn run(ctx: &Context, cmd: KeyCommand) -> Result<Exit> {
    match cmd {
        KeyCommand::Rotate => rotate(ctx),
        KeyCommand::Reset { yes: false } => Err(fail(
            Exit::Usage,
            "key reset forgets every encrypted secret; if the key file is really lost, run it \
             again with --yes",
        )),
        KeyCommand::Reset { yes: true } => reset(ctx),
    }
}

/// The new key goes into the key file next to the old ones before any secret is sealed
/// with it, and the old ones leave only after no secret names them: whatever the moment
/// of an interruption, the key file opens the whole database. Both steps hold the secrets
/// lock, which every command that seals a secret takes before it reads the key file: a
/// secret sealed beside a rotation is sealed with a key the file keeps.
fn rotate(ctx: &Context) -> Result<Exit> {
    let store = ctx.store()?;
    let store = store.as_ref();
    let file = ctx.key_file()?;
    let mut done = None;
    store.with_secrets_lock(&mut || {
        // Checks that the key opens every secret (and encrypts plaintext ones) first.
        ctx.unlock(store, false)?;
        let Some(ring) = store.keys().ring() else {
            return Err(file.error(
                "does not exist and no secret is stored: nothing to rotate (the first \
                 `account add` creates it)"
                    .to_string(),
            ));
        };
        let next = ring.with_new_key();
        file.replace(&next, true)?;
        store.keys().install(next.clone());
        let n = store.reseal(true)?;
        done = Some((n, next.current().kid.clone()));
        Ok(())
    })?;
    store.with_secrets_lock(&mut || vault::drop_unused_keys(store, &file).map(drop))?;
    let (n, kid) = done.expect("the first step ran");
    ctx.say(&format!(
        "wxtoken: {n} secret(s) now encrypted with the new key {kid} in {}; the previous key \
         file is {}: back up the new key file, then delete the old one",
        file.path.display(),
        file.old_path().display()
    ));
    Ok(Exit::Ok)
}

fn reset(ctx: &Context) -> Result<Exit> {
    let file = ctx.key_file()?;
    if file.load()?.is_some() {
        return Err(file.error(
            "exists: key reset is for a lost key file. If this one is the wrong file, move it \
             away (or point --key-file at the right one) first"
                .to_string(),
        ));
    }
    let store = ctx.store()?;
    let mut forgot = (0, 0);
    // Under the secrets lock, with the key file looked for again: a `set-secret` that
    // created a new key meanwhile has sealed a secret that must not be forgotten.
    store.with_secrets_lock(&mut || {
        if file.load()?.is_some() {
            return Err(file.error(
                "appeared while key reset was starting (another command created it); \
                 nothing was forgotten"
                    .to_string(),
            ));
        }
        forgot = store.forget_sealed(
            "its secret was forgotten with a lost key (wxtoken key reset): set it again \
             with `wxtoken account set-secret`",
        )?;
        Ok(())
    })?;
    let (accounts, sinks) = forgot;
    ctx.say(&format!(
        "wxtoken: forgot the encrypted secrets of {accounts} account(s) and the passwords of \
         {sinks} sink(s). Their tokens are served until they expire; set each secret again \
         with `wxtoken account set-secret` (the first one creates a new key file at {}), and \
         remove and add each such sink again",
        file.path.display()
    ));
    Ok(Exit::Ok)
}
