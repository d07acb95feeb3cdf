//! The sinks' SQL: their configuration, the outcome of the newest publish to each, and
//! which token row each exec sink last received.

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::{Store, open_secret, seal_secret};
use crate::exit::{self, fail};
use crate::secret::Secret;

/// A sink as stored.
#[derive(Debug, Clone)]
pub struct SinkRow {
    pub id: i64,
    pub name: String,
    /// `redis` or `exec`.
    pub kind: String,
    /// The Redis URL without its password, or the command.
    pub target: String,
    pub password: Option<Secret>,
    pub format: Option<String>,
    pub prefix: Option<String>,
    pub key_template: Option<String>,
    /// Account selectors (APPID or CORPID/AGENTID); empty means every account.
    pub accounts: Vec<String>,
    pub timeout: i64,
    pub created_at: i64,
    pub last: Option<SinkResult>,
}

/// The outcome of one publish to one sink. `error` never holds a key or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkResult {
    pub at: i64,
    pub ok: bool,
    pub published: i64,
    pub failed: i64,
    pub error: Option<String>,
}

/// The newest row of one kind of an account, with its id.
#[derive(Debug, Clone)]
pub struct NewestRow {
    pub id: i64,
    pub token: String,
    pub expires_at: i64,
}

const COLUMNS: &str = "id, name, kind, target, password, format, prefix, key_template, accounts, \
                       timeout, created_at, last_at, last_ok, last_published, last_failed, last_error";

fn sink_from_row(row: &rusqlite::Row) -> rusqlite::Result<SinkRow> {
    let accounts: String = row.get(8)?;
    let last_at: Option<i64> = row.get(11)?;
    Ok(SinkRow {
        id: row.get(0)?,
        name: row.get(1)?,
        kind: row.get(2)?,
        target: row.get(3)?,
        password: row.get::<_, Option<String>>(4)?.map(open_secret),
        format: row.get(5)?,
        prefix: row.get(6)?,
        key_template: row.get(7)?,
        accounts: serde_json::from_str(&accounts).unwrap_or_default(),
        timeout: row.get(9)?,
        created_at: row.get(10)?,
        last: match last_at {
            None => None,
            Some(at) => Some(SinkResult {
                at,
                ok: row.get(12)?,
                published: row.get(13)?,
                failed: row.get(14)?,
                error: row.get(15)?,
            }),
        },
    })
}

impl Store {
    pub fn add_sink(&self, sink: &SinkRow) -> Result<()> {
        let accounts = serde_json::to_string(&sink.accounts)?;
        let inserted = self.conn.execute(
            "INSERT INTO sinks (name, kind, target, password, format, prefix, key_template,
                                accounts, timeout, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (name) DO NOTHING",
            params![
                sink.name,
                sink.kind,
                sink.target,
                sink.password.as_ref().map(seal_secret),
                sink.format,
                sink.prefix,
                sink.key_template,
                accounts,
                sink.timeout,
                sink.created_at
            ],
        )?;
        if inserted == 0 {
            return Err(fail(
                exit::ACCOUNT,
                format!(
                    "sink {} already exists; remove it first (wxtoken sink remove)",
                    sink.name
                ),
            ));
        }
        Ok(())
    }

    /// Every sink, by name.
    pub fn sinks(&self) -> Result<Vec<SinkRow>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM sinks ORDER BY name"))?;
        let rows = stmt.query_map([], sink_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The sink, or the "no such sink" error (exit 6).
    pub fn require_sink(&self, name: &str) -> Result<SinkRow> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM sinks WHERE name = ?1"),
                params![name],
                sink_from_row,
            )
            .optional()?
            .ok_or_else(|| no_such_sink(name))
    }

    pub fn remove_sink(&self, name: &str) -> Result<()> {
        if self
            .conn
            .execute("DELETE FROM sinks WHERE name = ?1", params![name])?
            == 0
        {
            return Err(no_such_sink(name));
        }
        Ok(())
    }

    pub fn record_sink_result(&self, sink_id: i64, r: &SinkResult) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE sinks SET last_at = ?2, last_ok = ?3, last_published = ?4,
                                  last_failed = ?5, last_error = ?6
                 WHERE id = ?1",
            )?
            .execute(params![sink_id, r.at, r.ok, r.published, r.failed, r.error])?;
        Ok(())
    }

    /// The newest row of this kind for an account, valid or not.
    pub fn newest_row(&self, account_id: i64, kind: &str) -> Result<Option<NewestRow>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, token, expires_at FROM tokens WHERE account_id = ?1 AND kind = ?2
                 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![account_id, kind], |r| {
                Ok(NewestRow {
                    id: r.get(0)?,
                    token: r.get(1)?,
                    expires_at: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// The token row an exec sink last received for this account and kind.
    pub fn published_row(&self, sink_id: i64, account_id: i64, kind: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT token_id FROM sink_published
                 WHERE sink_id = ?1 AND account_id = ?2 AND kind = ?3",
            )?
            .query_row(params![sink_id, account_id, kind], |r| r.get(0))
            .optional()?)
    }

    pub fn note_published(
        &self,
        sink_id: i64,
        account_id: i64,
        kind: &str,
        token_id: i64,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO sink_published (sink_id, account_id, kind, token_id)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![sink_id, account_id, kind, token_id])?;
        Ok(())
    }
}

fn no_such_sink(name: &str) -> anyhow::Error {
    fail(
        exit::ACCOUNT,
        format!("no such sink {name} (see wxtoken sink list)"),
    )
}
