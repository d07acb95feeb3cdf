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

/// What one platform (a component, a suite) contributes, its enabled tenants summed up:
/// a platform may have 100,000 of them, too many for series of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlatformMetrics {
    /// The component appid or suite id.
    pub name: String,
    /// `component` or `suite`.
    pub kind: &'static str,
    /// Seconds since its newest ticket was created; `None` when it has none.
    pub ticket_age: Option<i64>,
    /// Refresh sends nothing for it: no ticket, or one past its validity.
    pub waiting: bool,
    pub tenants: i64,
    pub held: i64,
    pub revoked: i64,
    pub needs_reauth: i64,
    /// Tenants that wait for the platform's token.
    pub waiting_tenants: i64,
    /// Tenants whose last token fetch failed.
    pub failing: i64,
    /// The earliest expiry of its tenants' newest valid tokens (0: one has none), revoked
    /// tenants left out; `None` without tenants.
    pub tenant_expiry_min: Option<i64>,
    /// When its newest failed event happened.
    pub last_failed_event: Option<i64>,
}

/// Everything the metrics show.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub last_run: Option<RunRow>,
    pub last_success: Option<RunRow>,
    /// Enabled accounts that are nobody's tenant: a disabled one is not refreshed and
    /// should not alert.
    pub accounts: Vec<AccountMetrics>,
    /// Enabled tenants, counted in their platform's series.
    pub tenants: usize,
    pub platforms: Vec<PlatformMetrics>,
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

/// A per-platform family: name, help, and the value of one platform (`None`: left out).
type PlatformFamily = (
    &'static str,
    &'static str,
    fn(&PlatformMetrics) -> Option<i64>,
);

const PLATFORM_FAMILIES: [PlatformFamily; 10] = [
    (
        "wxtoken_platform_ticket_age_seconds",
        "How old the platform's newest ticket is (left out when it has none).",
        |p| p.ticket_age,
    ),
    (
        "wxtoken_platform_waiting_for_ticket",
        "1 while the platform has no valid ticket, so that its token cannot be fetched.",
        |p| Some(i64::from(p.waiting)),
    ),
    (
        "wxtoken_platform_tenants",
        "The platform's enabled tenants (authorizers, corps, 代开发 apps).",
        |p| Some(p.tenants),
    ),
    (
        "wxtoken_platform_tenants_held",
        "The platform's enabled tenants that refresh skips after an error.",
        |p| Some(p.held),
    ),
    (
        "wxtoken_platform_tenants_revoked",
        "Held tenants whose authorization was cancelled.",
        |p| Some(p.revoked),
    ),
    (
        "wxtoken_platform_tenants_needs_reauth",
        "Held tenants whose durable credential is refused: they must authorize again.",
        |p| Some(p.needs_reauth),
    ),
    (
        "wxtoken_platform_tenants_waiting",
        "Tenants that wait for the platform's token.",
        |p| Some(p.waiting_tenants),
    ),
    (
        "wxtoken_platform_tenants_last_attempt_failed",
        "Tenants whose last token fetch failed.",
        |p| Some(p.failing),
    ),
    (
        "wxtoken_platform_tenant_token_expiry_min_timestamp_seconds",
        "The earliest expiry of the newest valid tokens of the platform's tenants, revoked \
         ones left out (0: one has none).",
        |p| p.tenant_expiry_min,
    ),
    (
        "wxtoken_platform_last_failed_event_timestamp_seconds",
        "When the platform's newest failed event (a refused push, a failed auth-code \
         exchange) happened.",
        |p| p.last_failed_event,
    ),
];

fn platform_families(o: &mut Out, platforms: &[PlatformMetrics]) {
    for (name, help, value) in PLATFORM_FAMILIES {
        let rows: Vec<_> = (platforms.iter())
            .filter_map(|p| value(p).map(|v| (p, v)))
            .collect();
        if rows.is_empty() {
            continue;
        }
        o.head(name, help);
        for (p, v) in rows {
            o.sample(name, &[("platform", &p.name), ("kind", p.kind)], v);
        }
    }
}

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
    o.metric(
        "wxtoken_accounts",
        "Enabled accounts, the tenants of platforms included.",
        snap.accounts.len() + snap.tenants,
    );
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
    platform_families(&mut o, &snap.platforms);
    let min = (snap.accounts.iter().map(|a| a.expiry.unwrap_or(0)))
        .chain(snap.platforms.iter().filter_map(|p| p.tenant_expiry_min))
        .min();
    let Some(min) = min else {
        return o.0;
    };
    o.metric(
        "wxtoken_token_expiry_min_timestamp_seconds",
        "The earliest expiry of any enabled account's newest valid token, tenants of \
         platforms included except revoked ones (0: one has none).",
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
            tenants: 3,
            platforms: vec![PlatformMetrics {
                name: "ww_suite".into(),
                kind: "suite",
                ticket_age: Some(1900),
                waiting: true,
                tenants: 3,
                held: 2,
                revoked: 1,
                needs_reauth: 1,
                tenant_expiry_min: Some(1_600_000_000),
                ..PlatformMetrics::default()
            }],
        }
    }

    #[test]
    fn renders_every_metric() {
        let text = render(&snapshot());
        for line in [
            "wxtoken_build_info{version=\"",
            "wxtoken_accounts 5\n",
            "wxtoken_last_run_start_timestamp_seconds 1700000000\n",
            "wxtoken_last_run_duration_seconds 1.500\n",
            "wxtoken_last_run_success 0\n",
            "wxtoken_last_run_accounts{outcome=\"failed\"} 1\n",
            "wxtoken_last_success_timestamp_seconds 1699990000\n",
            "wxtoken_token_expiry_min_timestamp_seconds 0\n",
            "wxtoken_platform_tenant_token_expiry_min_timestamp_seconds{platform=\"ww_suite\",kind=\"suite\"} 1600000000\n",
            "wxtoken_token_expiry_timestamp_seconds{account=\"wxA\"} 1700007200\n",
            "wxtoken_token_expiry_timestamp_seconds{account=\"ww\\\"x/1\"} 0\n",
            "wxtoken_account_held{account=\"ww\\\"x/1\"} 1\n",
            "wxtoken_account_last_attempt_success{account=\"wxA\",outcome=\"ok\"} 1\n",
            "wxtoken_account_last_attempt_errcode{account=\"ww\\\"x/1\"} 40001\n",
            "wxtoken_platform_ticket_age_seconds{platform=\"ww_suite\",kind=\"suite\"} 1900\n",
            "wxtoken_platform_waiting_for_ticket{platform=\"ww_suite\",kind=\"suite\"} 1\n",
            "wxtoken_platform_tenants{platform=\"ww_suite\",kind=\"suite\"} 3\n",
            "wxtoken_platform_tenants_held{platform=\"ww_suite\",kind=\"suite\"} 2\n",
            "wxtoken_platform_tenants_revoked{platform=\"ww_suite\",kind=\"suite\"} 1\n",
            "wxtoken_platform_tenants_needs_reauth{platform=\"ww_suite\",kind=\"suite\"} 1\n",
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
