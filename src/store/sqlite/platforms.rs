//! The platform tables on SQLite: pushed tickets, push crypto and hooks, platform events,
//! and removing a platform with its tenants. Called from the `ReadStore` and `Store`
//! implementations in `mod.rs`.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};

use super::Sqlite;
use crate::domain::{AccountKey, Secret};
use crate::store::api::EXPORTED_EVENTS;
use crate::store::rows::{copied_crypto, copied_ticket, open_secret, seal_secret};
use crate::store::{
    Exported, PlatformCrypto, PlatformEvent, PlatformTicket, Result, StoreError, TicketStored,
};

impl Sqlite {
    fn key_of(&self, account_id: i64) -> Result<AccountKey> {
        self.conn
            .query_row(
                "SELECT appid, agent FROM accounts WHERE id = ?1",
                params![account_id],
                |r| {
                    Ok(AccountKey {
                        appid: r.get(0)?,
                        agent: r.get(1)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| StoreError::Io(format!("no account with id {account_id}")))
    }

    pub(super) fn ticket_times_(&self, account_id: i64) -> Result<Option<(i64, i64)>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT create_time, received_at FROM platform_tickets WHERE account_id = ?1",
            )?
            .query_row(params![account_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    pub(super) fn platform_events_(
        &self,
        account_id: i64,
        limit: i64,
    ) -> Result<Vec<PlatformEvent>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at, event, tenant, outcome, detail FROM platform_events
             WHERE account_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![account_id, limit], |r| {
            Ok(PlatformEvent {
                at: r.get(0)?,
                event: r.get(1)?,
                tenant: r.get(2)?,
                ok: r.get::<_, String>(3)? == "ok",
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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
        // The replaced ticket is zeroed in its page, as a replaced secret is.
        let n = self.zeroing(|| {
            Ok(self
                .conn
                .prepare_cached(
                    "INSERT INTO platform_tickets (account_id, ticket, create_time, received_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (account_id) DO UPDATE
                 SET ticket = excluded.ticket, create_time = excluded.create_time,
                     received_at = excluded.received_at
                 WHERE excluded.create_time > platform_tickets.create_time",
                )?
                .execute(params![account_id, sealed, create_time, now])?)
        })?;
        if n > 0 {
            // A hold for a stale or wrong ticket (61005, 61006, 40085) ends with a new one.
            self.conn
                .prepare_cached(
                    "UPDATE accounts SET held_until = NULL, held_reason = NULL
                     WHERE id = ?1 AND held_reason LIKE '%!_ticket%' ESCAPE '!'",
                )?
                .execute(params![account_id])?;
        }
        Ok(if n == 0 {
            TicketStored::Kept
        } else {
            TicketStored::Stored
        })
    }

    pub(super) fn platform_ticket_(&self, account_id: i64) -> Result<Option<PlatformTicket>> {
        let row: Option<(String, i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT ticket, create_time, received_at FROM platform_tickets
                 WHERE account_id = ?1",
            )?
            .query_row(params![account_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((stored, create_time, _received_at)) = row else {
            return Ok(None);
        };
        let key = self.key_of(account_id)?;
        let owner = crate::crypto::platform_owner(&key, "ticket");
        Ok(Some(PlatformTicket {
            ticket: open_secret(&self.keys, &owner, stored),
            create_time,
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
        self.zeroing(|| {
            self.conn.execute(
                "INSERT INTO platform_crypto (account_id, token, aes_key, updated_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (account_id) DO UPDATE
                 SET token = excluded.token, aes_key = excluded.aes_key,
                     updated_at = excluded.updated_at",
                params![account_id, token, aes_key, now],
            )?;
            Ok(())
        })
    }

    pub(super) fn set_platform_hook_(
        &self,
        account_id: i64,
        hook: Option<&str>,
        timeout: i64,
        secrets: bool,
        now: i64,
    ) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE platform_crypto SET hook = ?2, hook_timeout = ?3, hook_secrets = ?4,
                    updated_at = ?5
             WHERE account_id = ?1",
            params![account_id, hook, timeout, secrets, now],
        )?;
        Ok(n > 0)
    }

    pub(super) fn platform_crypto_(&self, account_id: i64) -> Result<Option<PlatformCrypto>> {
        type Row = (String, String, Option<String>, i64, bool);
        let row: Option<Row> = self
            .conn
            .prepare_cached(
                "SELECT token, aes_key, hook, hook_timeout, hook_secrets FROM platform_crypto
                 WHERE account_id = ?1",
            )?
            .query_row(params![account_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let Some((token, aes_key, hook, hook_timeout, hook_secrets)) = row else {
            return Ok(None);
        };
        let key = self.key_of(account_id)?;
        let open = |what: &str, stored: String| {
            open_secret(
                &self.keys,
                &crate::crypto::platform_owner(&key, what),
                stored,
            )
        };
        Ok(Some(PlatformCrypto {
            token: open("token", token),
            aes_key: open("aes_key", aes_key),
            hook,
            hook_timeout,
            hook_secrets,
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
        self.conn
            .prepare_cached(
                "INSERT INTO platform_events (account_id, at, event, tenant, outcome, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![account_id, at, event, tenant, outcome, failure])?;
        // The newest 1,000 per platform are plenty for status.
        self.conn
            .prepare_cached(
                "DELETE FROM platform_events WHERE account_id = ?1 AND id <=
                 (SELECT id FROM platform_events WHERE account_id = ?1
                  ORDER BY id DESC LIMIT 1 OFFSET 1000)",
            )?
            .execute(params![account_id])?;
        Ok(())
    }

    /// Fills in what `store copy` moves of a platform: its ticket and push settings
    /// (opened, to be sealed again for the target) and its newest events.
    pub(super) fn export_platform_(&self, item: &mut Exported) -> Result<()> {
        let id = item.account.id;
        let received: Option<i64> = self
            .conn
            .query_row(
                "SELECT received_at FROM platform_tickets WHERE account_id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        item.ticket = match (self.platform_ticket_(id)?, received) {
            (Some(ticket), Some(at)) => Some((ticket, at)),
            _ => None,
        };
        let updated: Option<i64> = self
            .conn
            .query_row(
                "SELECT updated_at FROM platform_crypto WHERE account_id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        item.crypto = match (self.platform_crypto_(id)?, updated) {
            (Some(crypto), Some(at)) => Some((crypto, at)),
            _ => None,
        };
        item.events = self.platform_events_(id, EXPORTED_EVENTS)?;
        Ok(())
    }

    /// Writes what `export_platform_` read, and a tenant's link to its platform (by key:
    /// `ids` maps each imported account to its id here), inside `import`'s transaction.
    pub(super) fn import_platform_(
        &self,
        item: &Exported,
        ids: &HashMap<AccountKey, i64>,
    ) -> Result<()> {
        let key = &item.account.key;
        let id = ids[key];
        if let Some(platform) = &item.platform {
            let platform_id = ids.get(platform).ok_or_else(|| {
                StoreError::Io(format!("the platform {platform} of {key} was not copied"))
            })?;
            self.conn.execute(
                "UPDATE accounts SET platform_id = ?2 WHERE id = ?1",
                params![id, platform_id],
            )?;
        }
        if let Some((ticket, received_at)) = &item.ticket {
            self.conn.execute(
                "INSERT INTO platform_tickets (account_id, ticket, create_time, received_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    id,
                    copied_ticket(&self.keys, key, ticket)?,
                    ticket.create_time,
                    received_at
                ],
            )?;
        }
        if let Some((crypto, updated_at)) = &item.crypto {
            let (token, aes_key) = copied_crypto(&self.keys, key, crypto)?;
            self.conn.execute(
                "INSERT INTO platform_crypto (account_id, token, aes_key, hook, hook_timeout,
                                              hook_secrets, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    token,
                    aes_key,
                    crypto.hook,
                    crypto.hook_timeout,
                    crypto.hook_secrets,
                    updated_at
                ],
            )?;
        }
        // Oldest first, so that the newest keeps the highest id.
        for e in item.events.iter().rev() {
            self.conn.execute(
                "INSERT INTO platform_events (account_id, at, event, tenant, outcome, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    id,
                    e.at,
                    e.event,
                    e.tenant,
                    if e.ok { "ok" } else { "failed" },
                    e.detail
                ],
            )?;
        }
        Ok(())
    }

    pub(super) fn remove_platform_(&self, key: &AccountKey) -> Result<usize> {
        self.zeroing(|| {
            let tx = super::Transaction::immediate(&self.conn, &self.path)?;
            let id: Option<i64> = self
                .conn
                .query_row(
                    "SELECT id FROM accounts WHERE appid = ?1 AND agent = ?2",
                    params![key.appid, key.agent],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = id else {
                return Err(StoreError::NotFound(key.clone()));
            };
            let tenants = self
                .conn
                .execute("DELETE FROM accounts WHERE platform_id = ?1", params![id])?;
            self.conn
                .execute("DELETE FROM accounts WHERE id = ?1", params![id])?;
            tx.commit()?;
            Ok(tenants)
        })
    }
}
