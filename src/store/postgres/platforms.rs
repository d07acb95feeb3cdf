//! The platform tables on PostgreSQL: pushed tickets, push crypto and hooks, platform
//! events, and removing a platform with its tenants. Called from the `ReadStore` and
//! `Store` implementations in `mod.rs`. Times a caller passes are this host's; the tables
//! keep them as given (a ticket's create time is WeChat's).

use super::Postgres;
use crate::domain::{AccountKey, Secret};
use crate::store::rows::{open_secret, seal_secret};
use crate::store::{
    PlatformCrypto, PlatformEvent, PlatformTicket, Result, StoreError, TicketStored,
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

    pub(super) fn ticket_times_(&self, account_id: i64) -> Result<Option<(i64, i64)>> {
        let row = self
            .c()
            .query_opt(
                "SELECT create_time, received_at FROM platform_tickets WHERE account_id = $1",
                &[&account_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
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
                "WITH added AS (
                     INSERT INTO platform_events (account_id, at, event, tenant, outcome, detail)
                     VALUES ($1, $2, $3, $4, $5, $6)
                 )
                 DELETE FROM platform_events WHERE account_id = $1 AND id <=
                     (SELECT id FROM platform_events WHERE account_id = $1
                      ORDER BY id DESC LIMIT 1 OFFSET 1000)",
                &[&account_id, &at, &event, &tenant, &outcome, &failure],
            )
            .map_err(|e| self.err(e))?;
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
