//! `wxtoken metrics`: the monitoring metrics on stdout, the same text that
//! `refresh --metrics-file` writes.

use anyhow::Result;

use super::emit;
use crate::exit;
use crate::metrics::{AccountMetrics, Snapshot, render};
use crate::policy;
use crate::store::{ACCESS_TOKEN, Store};

pub fn run(store: &Store, now: i64) -> Result<u8> {
    emit(&text(store, now)?)?;
    Ok(exit::OK)
}

/// The metrics as they stand in the database at `now`.
pub fn text(store: &Store, now: i64) -> Result<String> {
    let (last_run, last_success) = store.last_runs()?;
    let mut accounts = Vec::new();
    for a in store.accounts()?.into_iter().filter(|a| a.enabled) {
        let expiry = store
            .latest_token(&a.key, ACCESS_TOKEN)?
            .filter(|t| policy::usable(t.expires_at, now, 0))
            .map(|t| t.expires_at);
        let last_attempt = store
            .last_attempt(a.id, ACCESS_TOKEN)?
            .map(|at| (at.started_at, at.outcome, at.errcode));
        accounts.push(AccountMetrics {
            name: a.key.to_string(),
            expiry,
            held: a.held_until.is_some_and(|t| t > now),
            last_attempt,
        });
    }
    Ok(render(&Snapshot {
        last_run,
        last_success,
        accounts,
    }))
}
