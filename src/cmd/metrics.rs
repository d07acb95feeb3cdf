//! `wxtoken metrics`: the monitoring metrics on stdout, the same text that
//! `refresh --metrics-file` writes.

use anyhow::Result;

use super::{Context, emit};
use crate::domain::Credential;
use crate::exit::Exit;
use crate::metrics::{AccountMetrics, Snapshot, render};
use crate::policy;
use crate::store::ReadStore;

/// Reads only: the metrics never create, migrate or lock the database.
pub fn run(ctx: &Context) -> Result<Exit> {
    emit(&text(ctx.read_store()?.as_ref(), ctx.now())?)?;
    Ok(Exit::Ok)
}

/// The metrics as they stand in the store at `now`.
pub fn text(store: &dyn ReadStore, now: i64) -> Result<String> {
    let (last_run, last_success) = store.last_runs()?;
    let mut accounts = Vec::new();
    for a in store.accounts()?.into_iter().filter(|a| a.enabled) {
        let expiry = store
            .latest_token(&a.key, Credential::AccessToken)?
            .filter(|t| policy::usable(t.expires_at, now, 0))
            .map(|t| t.expires_at);
        let last_attempt = store
            .last_attempt(a.id, Credential::AccessToken)?
            .map(|at| {
                let (outcome, errcode, ..) = super::status::columns(&at);
                (at.started_at, outcome.to_string(), errcode)
            });
        accounts.push(AccountMetrics {
            name: a.key.to_string(),
            expiry,
            held: a.held_at(now).is_some(),
            last_attempt,
        });
    }
    Ok(render(&Snapshot {
        last_run,
        last_success,
        accounts,
    }))
}
