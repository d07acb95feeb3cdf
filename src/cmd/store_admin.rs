//! `wxtoken store ...`: move the whole store, and give PostgreSQL readers their grants.

use anyhow::Result;

use super::Context;
use crate::exit::{Exit, fail};
use crate::store::{self, Location};

/// Copies accounts, their secrets (opened with the key file and sealed again with it, so
/// they are never stored in plain text), holds, the newest valid tokens and the sinks
/// (their passwords sealed again the same way) into an empty store; platforms with their
/// tenants (linked by key), previous credentials, newest tickets, push settings and recent
/// events, everything sealed sealed again the same way. The same key file
/// opens both stores afterwards.
pub fn copy(ctx: &Context, to: &Location) -> Result<Exit> {
    let from = ctx.store()?;
    ctx.unlock(from.as_ref(), false)?;
    let items = from.export(ctx.now())?;
    let sinks = from.sinks()?;
    let target = store::open_write(to, true)?;
    // The target seals with the source's keys: the same key file opens both afterwards.
    if let Some(ring) = from.keys().ring() {
        target.keys().install(ring);
    }
    target.import(&items, &sinks)?;
    let tokens: usize = items.iter().map(|i| i.tokens.len()).sum();
    let platforms = items.iter().filter(|i| i.account.api.is_platform()).count();
    let tenants = items.iter().filter(|i| i.platform.is_some()).count();
    ctx.say(&format!(
        "copied {} account(s) ({platforms} platform(s), {tenants} tenant(s)), {tokens} valid \
         token(s) and ticket(s) and {} sink(s) from {} to {}",
        items.len(),
        sinks.len(),
        from.location(),
        target.location()
    ));
    Ok(Exit::Ok)
}

/// Applies the reader grants on a PostgreSQL store and prints them on stdout.
#[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
pub fn grant_reader(ctx: &Context, role: &str) -> Result<Exit> {
    match ctx.location() {
        #[cfg(feature = "postgres")]
        Location::Postgres(config) => {
            let store = crate::store::postgres::Postgres::open(config, store::Holder::current())?;
            let applied = store.grant_reader(role)?;
            let sql: String = applied.iter().map(|s| format!("{s};\n")).collect();
            super::emit(&sql)?;
            ctx.say(&format!("{role} can now read tokens from {config}"));
            Ok(Exit::Ok)
        }
        Location::File { path, .. } => Err(fail(
            Exit::Usage,
            format!(
                "grant-reader is for PostgreSQL stores; {} is an SQLite file (readers need \
                 read access to the file itself)",
                path.display()
            ),
        )),
    }
}
