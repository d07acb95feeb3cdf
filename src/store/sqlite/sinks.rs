//! The sinks' SQL on SQLite: their configuration, the outcome of the newest publish to each, and
//! which token row each exec sink last received.

use rusqlite::{OptionalExtension, params};

use super::Sqlite;
use crate::domain::Credential;
use crate::store::rows::SinkColumns;
use crate::store::{
    NewestRow, Result, SinkResult, SinkRow, Sinks, all_kinds, parse_kind, stored_password,
};

const COLUMNS: &str = "id, name, kind, target, password, format, prefix, key_template, accounts, \
                       timeout, created_at, last_at, last_ok, last_published, last_failed, last_error";

fn sink_from_row(keys: &crate::keys::Keys, row: &rusqlite::Row) -> rusqlite::Result<SinkRow> {
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
        let accounts = crate::store::rows::selectors_column(sink);
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

    /// Per account and kind, one descent of tokens_newest, as `all_newest` does; the ids and
    /// kinds are one JSON parameter each, so a batch has no parameter limit.
    fn newest_rows(&self, account_ids: &[i64]) -> Result<Vec<(i64, Credential, NewestRow)>> {
        let kinds: Vec<&str> = all_kinds().iter().map(|k| k.as_str()).collect();
        let mut stmt = self.conn.prepare_cached(
            "WITH a(id) AS (SELECT value FROM json_each(?1)),
                  k(kind) AS (SELECT value FROM json_each(?2))
             SELECT a.id, k.kind, t.id, t.token, t.expires_at
             FROM a CROSS JOIN k
             JOIN tokens t ON t.id = (SELECT n.id FROM tokens n
                                      WHERE n.account_id = a.id AND n.kind = k.kind
                                      ORDER BY n.id DESC LIMIT 1)",
        )?;
        let ids = serde_json::Value::from(account_ids).to_string();
        let kinds = serde_json::Value::from(kinds).to_string();
        let rows = stmt.query_map(params![ids, kinds], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                NewestRow {
                    id: r.get(2)?,
                    token: r.get(3)?,
                    expires_at: r.get(4)?,
                },
            ))
        })?;
        let mut all = Vec::new();
        for row in rows {
            let (account_id, kind, row) = row?;
            if let Some(kind) = parse_kind(&kind) {
                all.push((account_id, kind, row));
            }
        }
        Ok(all)
    }

    fn published_rows(&self, sink_id: i64) -> Result<Vec<(i64, Credential, i64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT account_id, kind, token_id FROM sink_published WHERE sink_id = ?1",
        )?;
        let rows = stmt.query_map(params![sink_id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get(2)?))
        })?;
        let mut all = Vec::new();
        for row in rows {
            let (account_id, kind, token_id) = row?;
            if let Some(kind) = parse_kind(&kind) {
                all.push((account_id, kind, token_id));
            }
        }
        Ok(all)
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
