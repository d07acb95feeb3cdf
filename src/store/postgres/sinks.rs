//! The sinks' SQL on PostgreSQL: their configuration, the outcome of the newest publish to
//! each, and which token row each exec sink last received. Times come from the server.

use ::postgres::types::Type;

use super::{NOW, NOW_EXACT, Postgres, host_now, host_offset};
use crate::domain::Credential;
use crate::store::rows::SinkColumns;
use crate::store::{
    NewestRow, Result, SinkResult, SinkRow, Sinks, all_kinds, parse_kind, stored_password,
};

impl Sinks for Postgres {
    fn add_sink(&self, sink: &SinkRow) -> Result<bool> {
        let password = stored_password(&self.keys, sink)?;
        let n = insert_sink(&mut *self.c(), sink, password.as_deref()).map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    fn sinks(&self) -> Result<Vec<SinkRow>> {
        let sql =
            format!("SELECT {SINK_COLUMNS}, {NOW_EXACT} AS server_now FROM sinks ORDER BY name");
        let (rows, skew) = self.query_timed(&sql, &[])?;
        Ok(rows
            .iter()
            .map(|r| sink_from_row(&self.keys, r, skew))
            .collect())
    }

    fn sink(&self, name: &str) -> Result<Option<SinkRow>> {
        let sql =
            format!("SELECT {SINK_COLUMNS}, {NOW_EXACT} AS server_now FROM sinks WHERE name = $1");
        let (rows, skew) = self.query_timed(&sql, &[&name])?;
        Ok(rows.first().map(|r| sink_from_row(&self.keys, r, skew)))
    }

    fn remove_sink(&self, name: &str) -> Result<bool> {
        let n = self
            .c()
            .execute("DELETE FROM sinks WHERE name = $1", &[&name])
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// At the server's now, as every time on PostgreSQL; `r.at` is not used.
    fn record_sink_result(&self, sink_id: i64, r: &SinkResult) -> Result<()> {
        self.c()
            .execute(
                &format!(
                    "UPDATE sinks SET last_at = {NOW}, last_ok = $2, last_published = $3,
                                      last_failed = $4, last_error = $5
                     WHERE id = $1"
                ),
                &[&sink_id, &r.ok, &r.published, &r.failed, &r.error],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// One round trip: per account and kind, one descent of tokens_newest, as `all_newest`
    /// does; `expires_at` in this host's clock, judged by the server's, as `latest_token`.
    fn newest_rows(&self, account_ids: &[i64]) -> Result<Vec<(i64, Credential, NewestRow)>> {
        let kinds: Vec<&str> = all_kinds().iter().map(|k| k.as_str()).collect();
        let sql = format!(
            "SELECT a.id, k.kind, t.id, t.token, t.expires_at, {NOW_EXACT}
             FROM unnest($1::bigint[]) AS a(id) CROSS JOIN unnest($2::text[]) AS k(kind)
             CROSS JOIN LATERAL (SELECT n.id, n.token, n.expires_at FROM tokens n
                                 WHERE n.account_id = a.id AND n.kind = k.kind
                                 ORDER BY n.id DESC LIMIT 1) t"
        );
        let sent = host_now();
        let rows = self
            .c()
            .query_typed(
                &sql,
                &[(&account_ids, Type::INT8_ARRAY), (&kinds, Type::TEXT_ARRAY)],
            )
            .map_err(|e| self.err(e))?;
        let received = host_now();
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let skew = host_offset(sent, first.get(5), received);
        Ok(rows
            .iter()
            .filter_map(|r| {
                let kind = parse_kind(r.get(1))?;
                let row = NewestRow {
                    id: r.get(2),
                    token: r.get(3),
                    expires_at: r.get::<_, i64>(4) + skew,
                };
                Some((r.get(0), kind, row))
            })
            .collect())
    }

    fn published_rows(&self, sink_id: i64) -> Result<Vec<(i64, Credential, i64)>> {
        let rows = self
            .c()
            .query(
                "SELECT account_id, kind, token_id FROM sink_published WHERE sink_id = $1",
                &[&sink_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((r.get(0), parse_kind(r.get(1))?, r.get(2))))
            .collect())
    }

    fn note_published(
        &self,
        sink_id: i64,
        account_id: i64,
        kind: Credential,
        token_id: i64,
    ) -> Result<()> {
        self.c()
            .execute(
                "INSERT INTO sink_published (sink_id, account_id, kind, token_id)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (sink_id, account_id, kind) DO UPDATE SET token_id = EXCLUDED.token_id",
                &[&sink_id, &account_id, &kind.as_str(), &token_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

const SINK_COLUMNS: &str = "id, name, kind, target, password, format, prefix, key_template, \
     accounts, timeout, created_at, last_at, last_ok, last_published, last_failed, last_error";

/// Inserts a sink unless one of its name exists (0 rows then), with its secret column as
/// [`stored_password`] gives it; on a connection or inside a transaction (`store copy`).
pub(super) fn insert_sink(
    c: &mut impl postgres::GenericClient,
    sink: &SinkRow,
    password: Option<&str>,
) -> std::result::Result<u64, postgres::Error> {
    let accounts = crate::store::rows::selectors_column(sink);
    c.execute(
        &format!(
            "INSERT INTO sinks (name, kind, target, password, format, prefix, key_template,
                                accounts, timeout, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {NOW})
             ON CONFLICT (name) DO NOTHING"
        ),
        &[
            &sink.name,
            &sink.kind,
            &sink.target,
            &password,
            &sink.format,
            &sink.prefix,
            &sink.key_template,
            &accounts,
            &sink.timeout,
        ],
    )
}

/// A sink, its times (stamped by the server) moved into this host's clock by `skew`.
fn sink_from_row(keys: &crate::keys::Keys, row: &postgres::Row, skew: i64) -> SinkRow {
    let last_at: Option<i64> = row.get(11);
    SinkColumns {
        id: row.get(0),
        name: row.get(1),
        kind: row.get(2),
        target: row.get(3),
        password: row.get(4),
        format: row.get(5),
        prefix: row.get(6),
        key_template: row.get(7),
        accounts: row.get(8),
        timeout: row.get(9),
        created_at: row.get::<_, i64>(10) + skew,
        last: last_at.map(|at| SinkResult {
            at: at + skew,
            ok: row.get::<_, Option<bool>>(12).unwrap_or(false),
            published: row.get::<_, Option<i64>>(13).unwrap_or(0),
            failed: row.get::<_, Option<i64>>(14).unwrap_or(0),
            error: row.get(15),
        }),
    }
    .sink(keys)
}
