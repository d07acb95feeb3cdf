//! The sinks' SQL on SQLite: their configuration, the outcome of the newest publish to each, and
//! which token row each exec sink last received.

use rusqlite::{OptionalExtension, params};

use super::Sqlite;
use crate::domain::Credential;
use crate::store::rows::SinkColumns;
use crate::store::{NewestRow, Result, SinkResult, SinkRow, Sinks, stored_password};

const COLUMNS: &str = "id, name, kind, target, password, format, prefix, key_template, accounts, \
                       timeout, created_at, last_at, last_ok, last_published, last_failed, last_error";

fn sink_from_row(keys: &crate::vault::Keys, row: &rusqlite::Row) -> rusqlite::Result<SinkRow> {
    let last_at: Option<i64> = row.get(11)?;
    Ok(SinkColumns {
        id: row.get(0)?,
        name: row.get(1)?,
        kind: row.get(2)?,
        target: row.get(3)?,
        password: row.get(4)?,
        format: row.get(5)?,
        prefix: row.get(6)?,
        key_template: row.get(7)?,
        accounts: row.get(8)?,
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
    }
    .sink(keys))
}

impl Sinks for Sqlite {
    fn add_sink(&self, sink: &SinkRow) -> Result<bool> {
        let accounts = serde_json::Value::from(sink.accounts.clone()).to_string();
        let password = stored_password(&self.keys, sink)?;
        let inserted = self.conn.execute(
            "INSERT INTO sinks (name, kind, target, password, format, prefix, key_template,
                                accounts, timeout, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (name) DO NOTHING",
            params![
                sink.name,
                sink.kind,
                sink.target,
                password,
                sink.format,
                sink.prefix,
                sink.key_template,
                accounts,
                sink.timeout,
                sink.created_at
            ],
        )?;
        Ok(inserted == 1)
    }

    fn sinks(&self) -> Result<Vec<SinkRow>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM sinks ORDER BY name"))?;
        let rows = stmt.query_map([], |r| sink_from_row(&self.keys, r))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn sink(&self, name: &str) -> Result<Option<SinkRow>> {
        let sql = format!("SELECT {COLUMNS} FROM sinks WHERE name = ?1");
        Ok(self
            .conn
            .query_row(&sql, params![name], |r| sink_from_row(&self.keys, r))
            .optional()?)
    }

    fn remove_sink(&self, name: &str) -> Result<bool> {
        let n = self
            .conn
            .execute("DELETE FROM sinks WHERE name = ?1", params![name])?;
        Ok(n == 1)
    }

    fn record_sink_result(&self, sink_id: i64, r: &SinkResult) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE sinks SET last_at = ?2, last_ok = ?3, last_published = ?4,
                                  last_failed = ?5, last_error = ?6
                 WHERE id = ?1",
            )?
            .execute(params![sink_id, r.at, r.ok, r.published, r.failed, r.error])?;
        Ok(())
    }

    fn newest_row(&self, account_id: i64, kind: Credential) -> Result<Option<NewestRow>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, token, expires_at FROM tokens WHERE account_id = ?1 AND kind = ?2
                 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![account_id, kind.as_str()], |r| {
                Ok(NewestRow {
                    id: r.get(0)?,
                    token: r.get(1)?,
                    expires_at: r.get(2)?,
                })
            })
            .optional()?)
    }

    fn published_row(
        &self,
        sink_id: i64,
        account_id: i64,
        kind: Credential,
    ) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT token_id FROM sink_published
                 WHERE sink_id = ?1 AND account_id = ?2 AND kind = ?3",
            )?
            .query_row(params![sink_id, account_id, kind.as_str()], |r| r.get(0))
            .optional()?)
    }

    fn note_published(
        &self,
        sink_id: i64,
        account_id: i64,
        kind: Credential,
        token_id: i64,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO sink_published (sink_id, account_id, kind, token_id)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![sink_id, account_id, kind.as_str(), token_id])?;
        Ok(())
    }
}
