//! The platform tables on PostgreSQL: pushed tickets, push crypto and hooks, platform
//! events, and removing a platform with its tenants. Called from the `ReadStore` and
//! `Store` implementations in `mod.rs`. Times a caller passes are this host's; the tables
//! keep them as given (a ticket's create time is WeChat's).

use std::collections::HashMap;

use super::Postgres;
use crate::domain::{AccountKey, Secret};
use crate::store::api::EXPORTED_EVENTS;
use crate::store::rows::{copied_crypto, copied_ticket, open_secret, seal_secret};
use crate::store::{
    Exported, PlatformCrypto, PlatformEvent, PlatformTicket, Result, StoreError, TicketStored,
};

impl Postgres {
    fn key_of(&self, account_id: i64) -> Result<AccountKey> {
        let row = self
            .c()
            .query_opt(
                "SELECT appid, agent FROM accounts WHERE id = $1",
                &[&account_id],
            )
            .map_err(|e| self.err(e))?
            .ok_or_else(|| StoreError::Io(format!("no account with id {account_id}")))?;
        Ok(AccountKey {
            appid: row.get(0),
            agent: row.get(1),
        })
    }

    /// None for a reader role, which may not read `platform_tickets` (a sealed column is
    /// in it): `get` then says less about a platform that has no token yet.
    pub(super) fn ticket_times_(&self, account_id: i64) -> Result<Option<(i64, i64)>> {
        let row = self.c().query_opt(
            "SELECT create_time, received_at FROM platform_tickets WHERE account_id = $1",
            &[&account_id],
        );
        match row {
            Ok(row) => Ok(row.map(|r| (r.get(0), r.get(1)))),
            Err(e) if e.code() == Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                Ok(None)
            }
            Err(e) => Err(self.err(e)),
        }
    }

    pub(super) fn platform_events_(
        &self,
        account_id: i64,
        limit: i64,
    ) -> Result<Vec<PlatformEvent>> {
        let rows = self
            .c()
            .query(
                "SELECT at, event, tenant, outcome, detail FROM platform_events
                 WHERE account_id = $1 ORDER BY id DESC LIMIT $2",
                &[&account_id, &limit],
            )
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| PlatformEvent {
                at: r.get(0),
                event: r.get(1),
                tenant: r.get(2),
                ok: r.get::<_, String>(3) == "ok",
                detail: r.get(4),
            })
            .collect())
    }

    pub(super) fn set_platform_ticket_(
        &self,
        account_id: i64,
        ticket: &Secret,
        create_time: i64,
        now: i64,
    ) -> Result<TicketStored> {
        if ticket.expose().is_empty() {
            return Err(StoreError::Io("refusing to store an empty ticket".into()));
        }
        let key = self.key_of(account_id)?;
        let owner = crate::crypto::platform_owner(&key, "ticket");
        let sealed = seal_secret(&self.keys, &owner, ticket)?;
        let n = self
            .c()
            .execute(
                "INSERT INTO platform_tickets AS p (account_id, ticket, create_time, received_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (account_id) DO UPDATE
                 SET ticket = excluded.ticket, create_time = excluded.create_time,
                     received_at = excluded.received_at
                 WHERE excluded.create_time > p.create_time",
                &[&account_id, &sealed, &create_time, &now],
            )
            .map_err(|e| self.err(e))?;
        if n > 0 {
            // A hold for a stale or wrong ticket (61005, 61006, 40085) ends with a new one.
            self.c()
                .execute(
                    "UPDATE accounts SET held_until = NULL, held_reason = NULL
                     WHERE id = $1 AND held_reason LIKE '%\\_ticket%'",
                    &[&account_id],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(if n == 0 {
            TicketStored::Kept
        } else {
            TicketStored::Stored
        })
    }

    pub(super) fn platform_ticket_(&self, account_id: i64) -> Result<Option<PlatformTicket>> {
        let row = self
            .c()
            .query_opt(
                "SELECT p.ticket, p.create_time, p.received_at, a.appid, a.agent
                 FROM platform_tickets p JOIN accounts a ON a.id = p.account_id
                 WHERE p.account_id = $1",
                &[&account_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(row.map(|r| {
            let key = AccountKey {
                appid: r.get(3),
                agent: r.get(4),
            };
            let owner = crate::crypto::platform_owner(&key, "ticket");
            PlatformTicket {
                ticket: open_secret(&self.keys, &owner, r.get(0)),
                create_time: r.get(1),
            }
        }))
    }

    pub(super) fn set_platform_crypto_(
        &self,
        account_id: i64,
        token: &Secret,
        aes_key: &Secret,
        now: i64,
    ) -> Result<()> {
        let key = self.key_of(account_id)?;
        let token = seal_secret(
            &self.keys,
            &crate::crypto::platform_owner(&key, "token"),
            token,
        )?;
        let aes_key = seal_secret(
            &self.keys,
            &crate::crypto::platform_owner(&key, "aes_key"),
            aes_key,
        )?;
        self.c()
            .execute(
                "INSERT INTO platform_crypto (account_id, token, aes_key, updated_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (account_id) DO UPDATE
                 SET token = excluded.token, aes_key = excluded.aes_key,
                     updated_at = excluded.updated_at",
                &[&account_id, &token, &aes_key, &now],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(super) fn set_platform_hook_(
        &self,
        account_id: i64,
        hook: Option<&str>,
        timeout: i64,
        secrets: bool,
        now: i64,
    ) -> Result<bool> {
        let n = self
            .c()
            .execute(
                "UPDATE platform_crypto SET hook = $2, hook_timeout = $3, hook_secrets = $4,
                        updated_at = $5
                 WHERE account_id = $1",
                &[&account_id, &hook, &timeout, &secrets, &now],
            )
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    pub(super) fn platform_crypto_(&self, account_id: i64) -> Result<Option<PlatformCrypto>> {
        let row = self
            .c()
            .query_opt(
                "SELECT p.token, p.aes_key, p.hook, p.hook_timeout, p.hook_secrets,
                        a.appid, a.agent
                 FROM platform_crypto p JOIN accounts a ON a.id = p.account_id
                 WHERE p.account_id = $1",
                &[&account_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(row.map(|r| {
            let key = AccountKey {
                appid: r.get(5),
                agent: r.get(6),
            };
            let open = |what: &str, stored: String| {
                open_secret(
                    &self.keys,
                    &crate::crypto::platform_owner(&key, what),
                    stored,
                )
            };
            PlatformCrypto {
                token: open("token", r.get(0)),
                aes_key: open("aes_key", r.get(1)),
                hook: r.get(2),
                hook_timeout: r.get(3),
                hook_secrets: r.get(4),
            }
        }))
    }

    pub(super) fn record_platform_event_(
        &self,
        account_id: i64,
        at: i64,
        event: &str,
        tenant: Option<&str>,
        failure: Option<&str>,
    ) -> Result<()> {
        let outcome = if failure.is_some() { "failed" } else { "ok" };
        self.c()
            .execute(
                // The newest 1,000 per platform, as on SQLite. The DELETE does not see the
                // row its own statement adds (one snapshot), so it keeps 999 of the others.
                "WITH added AS (
                     INSERT INTO platform_events (account_id, at, event, tenant, outcome, detail)
                     VALUES ($1, $2, $3, $4, $5, $6)
                 )
                 DELETE FROM platform_events WHERE account_id = $1 AND id <=
                     (SELECT id FROM platform_events WHERE account_id = $1
                      ORDER BY id DESC LIMIT 1 OFFSET 999)",
                &[&account_id, &at, &event, &tenant, &outcome, &failure],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Fills in what `store copy` moves of a platform: its ticket and push settings
    /// (opened, to be sealed again for the target) and its newest events. Their times are
    /// the hosts' that stored them (and WeChat's create time): copied as they are.
    pub(super) fn export_platform_(&self, item: &mut Exported) -> Result<()> {
        let id = item.account.id;
        let times = self
            .c()
            .query_one(
                "SELECT (SELECT received_at FROM platform_tickets WHERE account_id = $1),
                        (SELECT updated_at FROM platform_crypto WHERE account_id = $1)",
                &[&id],
            )
            .map_err(|e| self.err(e))?;
        let (received, updated): (Option<i64>, Option<i64>) = (times.get(0), times.get(1));
        item.ticket = self.platform_ticket_(id)?.zip(received);
        item.crypto = self.platform_crypto_(id)?.zip(updated);
        item.events = self.platform_events_(id, EXPORTED_EVENTS)?;
        Ok(())
    }

    /// Writes what `export_platform_` read, and a tenant's link to its platform (by key:
    /// `ids` maps each imported account to its id here), inside `import`'s transaction.
    pub(super) fn import_platform_(
        &self,
        tx: &mut postgres::Transaction<'_>,
        item: &Exported,
        ids: &HashMap<AccountKey, i64>,
    ) -> Result<()> {
        let config = &self.config;
        let err = |e: postgres::Error| super::pg_error(config, &e);
        let key = &item.account.key;
        let id = ids[key];
        if let Some(platform) = &item.platform {
            let platform_id = ids.get(platform).ok_or_else(|| {
                StoreError::Io(format!("the platform {platform} of {key} was not copied"))
            })?;
            tx.execute(
                "UPDATE accounts SET platform_id = $2 WHERE id = $1",
                &[&id, platform_id],
            )
            .map_err(err)?;
        }
        if let Some((ticket, received_at)) = &item.ticket {
            tx.execute(
                "INSERT INTO platform_tickets (account_id, ticket, create_time, received_at)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &id,
                    &copied_ticket(&self.keys, key, ticket)?,
                    &ticket.create_time,
                    received_at,
                ],
            )
            .map_err(err)?;
        }
        if let Some((crypto, updated_at)) = &item.crypto {
            let (token, aes_key) = copied_crypto(&self.keys, key, crypto)?;
            tx.execute(
                "INSERT INTO platform_crypto (account_id, token, aes_key, hook, hook_timeout,
                                              hook_secrets, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &id,
                    &token,
                    &aes_key,
                    &crypto.hook,
                    &crypto.hook_timeout,
                    &crypto.hook_secrets,
                    updated_at,
                ],
            )
            .map_err(err)?;
        }
        // Oldest first, so that the newest keeps the highest id.
        for e in item.events.iter().rev() {
            tx.execute(
                "INSERT INTO platform_events (account_id, at, event, tenant, outcome, detail)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &id,
                    &e.at,
                    &e.event,
                    &e.tenant,
                    &if e.ok { "ok" } else { "failed" },
                    &e.detail,
                ],
            )
            .map_err(err)?;
        }
        Ok(())
    }

    pub(super) fn remove_platform_(&self, key: &AccountKey) -> Result<usize> {
        let err = |e: postgres::Error| self.err(e);
        let mut c = self.c();
        let mut tx = c.transaction().map_err(err)?;
        let row = tx
            .query_opt(
                "SELECT id FROM accounts WHERE appid = $1 AND agent = $2 FOR UPDATE",
                &[&key.appid, &key.agent],
            )
            .map_err(err)?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(key.clone()));
        };
        let id: i64 = row.get(0);
        let tenants = tx
            .execute("DELETE FROM accounts WHERE platform_id = $1", &[&id])
            .map_err(err)?;
        tx.execute("DELETE FROM accounts WHERE id = $1", &[&id])
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(tenants as usize)
    }
}
