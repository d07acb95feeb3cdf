//! Monitoring metrics in the Prometheus text format, for node_exporter's textfile collector.
//! Rendered from the database, not from one run's memory, so that the time of the last
//! success survives a failed run. Pure: the caller gathers a [`Snapshot`].
//!
//! Every metric is a gauge: a one-shot job has no process to keep counters in. Samples carry
//! no timestamps, because node_exporter rejects a textfile that has them. Labels hold only
//! account names (appid or corpid/agentid) and fixed words, never a secret, token or errmsg.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::store::RunRow;

/// What one account contributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountMetrics {
    /// `appid`, or `corpid/agentid`.
    pub name: String,
    /// When the newest valid access token expires (Unix seconds); `None` when there is none.
    pub expiry: Option<i64>,
    pub held: bool,
    /// The last token fetch: when, its outcome word (ok, unchanged, errcode, http,
    /// transport, not_json, invalid) and its errcode, if it has one.
    pub last_attempt: Option<(i64, String, Option<i64>)>,
}

/// Everything the metrics show.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub last_run: Option<RunRow>,
    pub last_success: Option<RunRow>,
    /// Enabled accounts only: a disabled one is not refreshed and should not alert.
    pub accounts: Vec<AccountMetrics>,
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} gauge");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0 += name;
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn metric(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.head(name, help);
        self.sample(name, &[], value);
    }
}

/// Label values escape backslash, double quote and newline (the text format's rules).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn seconds(ms: i64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// A sample of a per-account family: an `outcome` label if it has one, and the value;
/// `None` leaves the account out of the family.
type AccountSample<'a> = Option<(Option<&'a str>, i64)>;

/// A per-account family: name, help, and the sample of one account.
type Family = (
    &'static str,
    &'static str,
    fn(&AccountMetrics) -> AccountSample<'_>,
);

const ACCOUNT_FAMILIES: [Family; 5] = [
    (
        "wxtoken_token_expiry_timestamp_seconds",
        "When the account's newest valid access token expires (0: it has none).",
        |a| Some((None, a.expiry.unwrap_or(0))),
    ),
    (
        "wxtoken_account_held",
        "1 while refresh skips the account after an error that retrying cannot fix.",
        |a| Some((None, i64::from(a.held))),
    ),
    (
        "wxtoken_account_last_attempt_timestamp_seconds",
        "When the account's last token fetch started.",
        |a| a.last_attempt.as_ref().map(|(at, _, _)| (None, *at)),
    ),
    (
        "wxtoken_account_last_attempt_success",
        "1 if the account's last token fetch succeeded; outcome says how it ended.",
        |a| {
            let (_, outcome, _) = a.last_attempt.as_ref()?;
            let ok = matches!(outcome.as_str(), "ok" | "unchanged");
            Some((Some(outcome.as_str()), i64::from(ok)))
        },
    ),
    (
        "wxtoken_account_last_attempt_errcode",
        "The WeChat errcode of the account's last token fetch (0: none).",
        |a| {
            a.last_attempt
                .as_ref()
                .map(|(_, _, e)| (None, e.unwrap_or(0)))
        },
    ),
];

pub fn render(snap: &Snapshot) -> String {
    let mut o = Out(String::new());
    o.head(
        "wxtoken_build_info",
        "The wxtoken version that wrote these metrics.",
    );
    o.sample(
        "wxtoken_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    o.metric("wxtoken_accounts", "Enabled accounts.", snap.accounts.len());
    if let Some(run) = &snap.last_run {
        o.metric(
            "wxtoken_last_run_start_timestamp_seconds",
            "When the last refresh run started.",
            run.started_at,
        );
        o.metric(
            "wxtoken_last_run_duration_seconds",
            "How long the last refresh run took.",
            seconds(run.duration_ms),
        );
        o.metric(
            "wxtoken_last_run_success",
            "1 if the last refresh run covered every enabled account and none failed or was held.",
            u8::from(run.is_success()),
        );
        o.head(
            "wxtoken_last_run_accounts",
            "Accounts in the last refresh run, by outcome.",
        );
        for (outcome, n) in [
            ("refreshed", run.refreshed),
            ("fresh", run.fresh),
            ("busy", run.busy),
            ("held", run.held),
            ("failed", run.failed),
        ] {
            o.sample("wxtoken_last_run_accounts", &[("outcome", outcome)], n);
        }
    }
    if let Some(run) = &snap.last_success {
        o.metric(
            "wxtoken_last_success_timestamp_seconds",
            "When the last successful refresh run (every enabled account, none failed or held) ended.",
            run.finished_at,
        );
    }
    if snap.accounts.is_empty() {
        return o.0;
    }
    let min = snap
        .accounts
        .iter()
        .map(|a| a.expiry.unwrap_or(0))
        .min()
        .unwrap_or(0);
    o.metric(
        "wxtoken_token_expiry_min_timestamp_seconds",
        "The earliest expiry of any enabled account's newest valid token (0: one has none).",
        min,
    );
    for (name, help, value) in ACCOUNT_FAMILIES {
        let rows: Vec<_> = snap
            .accounts
            .iter()
            .filter_map(|a| value(a).map(|v| (a, v)))
            .collect();
        if rows.is_empty() {
            continue;
        }
        o.head(name, help);
        for (a, (outcome, v)) in rows {
            let mut labels = vec![("account", a.name.as_str())];
            labels.extend(outcome.map(|o| ("outcome", o)));
            o.sample(name, &labels, v);
        }
    }
    o.0
}

/// Replaces `path` with `text` atomically, the way node_exporter's textfile collector
/// needs: a temporary file in the same directory (same filesystem, so the rename is
/// atomic), named so that it does not match `*.prom`, made 0644 whatever the umask (the
/// collector runs as another user), then renamed over the target. The directory may be
/// writable by others: `atomicfile` never follows a link planted there.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    crate::atomicfile::write(path, text.as_bytes(), 0o644)
        .with_context(|| format!("could not write metrics file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let run = RunRow {
            started_at: 1_700_000_000,
            finished_at: 1_700_000_002,
            duration_ms: 1_500,
            scope: "all".into(),
            accounts: 2,
            refreshed: 1,
            failed: 1,
            ..RunRow::default()
        };
        Snapshot {
            last_run: Some(run.clone()),
            last_success: Some(RunRow {
                finished_at: 1_699_990_000,
                failed: 0,
                ..run
            }),
            accounts: vec![
                AccountMetrics {
                    name: "wxA".into(),
                    expiry: Some(1_700_007_200),
                    held: false,
                    last_attempt: Some((1_700_000_000, "ok".into(), None)),
                },
                AccountMetrics {
                    name: "ww\"x/1".into(),
                    expiry: None,
                    held: true,
                    last_attempt: Some((1_700_000_001, "errcode".into(), Some(40001))),
                },
            ],
        }
    }

    #[test]
    fn renders_every_metric() {
        let text = render(&snapshot());
        for line in [
            "wxtoken_build_info{version=\"",
            "wxtoken_accounts 2\n",
            "wxtoken_last_run_start_timestamp_seconds 1700000000\n",
            "wxtoken_last_run_duration_seconds 1.500\n",
            "wxtoken_last_run_success 0\n",
            "wxtoken_last_run_accounts{outcome=\"failed\"} 1\n",
            "wxtoken_last_success_timestamp_seconds 1699990000\n",
            "wxtoken_token_expiry_min_timestamp_seconds 0\n",
            "wxtoken_token_expiry_timestamp_seconds{account=\"wxA\"} 1700007200\n",
            "wxtoken_token_expiry_timestamp_seconds{account=\"ww\\\"x/1\"} 0\n",
            "wxtoken_account_held{account=\"ww\\\"x/1\"} 1\n",
            "wxtoken_account_last_attempt_success{account=\"wxA\",outcome=\"ok\"} 1\n",
            "wxtoken_account_last_attempt_errcode{account=\"ww\\\"x/1\"} 40001\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // Every sample follows its HELP and TYPE, and none carries a timestamp.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} gauge")), "{line}");
            let value = match line.rfind('}') {
                Some(i) => &line[i + 1..],
                None => line.split_once(' ').unwrap().1,
            };
            assert_eq!(value.split_whitespace().count(), 1, "{line}");
        }
    }

    #[test]
    fn without_runs_or_accounts() {
        let text = render(&Snapshot::default());
        assert!(text.contains("wxtoken_accounts 0\n"));
        assert!(!text.contains("wxtoken_last_success"));
        assert!(!text.contains("wxtoken_token_expiry"));
    }
}
