//! Pure decisions: durations, expiry, backoff, and what each WeChat errcode means.
//! Nothing here does I/O or reads the clock; `now` is always an argument (Unix seconds).

use std::time::Duration;

use crate::domain::Api;

pub use crate::domain::Hold;

/// How long to wait before retry number `retry` (1 = the first retry).
/// Exponential from `base`, with full jitter in [50 %, 100 %] so that many accounts that
/// failed together do not retry together. `jitter` is a number in [0, 1).
pub fn backoff(base: Duration, retry: u32, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << retry.saturating_sub(1).min(10));
    exp.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Unix seconds of the next midnight in China (UTC+8), when WeChat's daily quotas reset.
pub fn next_china_midnight(now: i64) -> i64 {
    const OFFSET: i64 = 8 * 3600;
    const DAY: i64 = 86_400;
    ((now + OFFSET).div_euclid(DAY) + 1) * DAY - OFFSET
}

/// At most this many tries per fetch, transient failures only.
pub const MAX_TRIES: u32 = 3;

/// How many fetches `refresh` runs at once unless `--jobs` says otherwise. The CLI spells
/// it out as its default; a test in config.rs keeps the two equal.
#[cfg_attr(not(test), allow(dead_code))]
pub const DEFAULT_JOBS: usize = 8;

/// How many token rows per account and kind pruning keeps (besides every still-valid one).
pub const DEFAULT_KEEP: i64 = 48;

/// A platform kind's token (component, suite, provider, authorizer, corp) is refetched by a
/// plain `refresh` only when it has less than this left: an hourly run replaces it when it
/// would not outlast the next run by 5 minutes, and never twice in a row.
pub const PLATFORM_DUE_WINDOW: i64 = 3900;

/// Attempts older than this are pruned after every refresh, and by `prune`.
pub const ATTEMPT_RETENTION: i64 = 30 * 86_400;

/// Forced stable-token refreshes are remembered this long: enough to count a China day.
pub const FORCED_REFRESH_RETENTION: i64 = 2 * 86_400;

/// How long a store operation waits for another process's write before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often `get --reject` looks again while another process fetches the account.
pub const RENEW_POLL: Duration = Duration::from_millis(25);

/// How long a claim lasts: long enough for every try of one fetch, short enough that a
/// holder that died on another host blocks nobody for long.
pub fn claim_ttl(timeout_secs: u64) -> i64 {
    MAX_TRIES as i64 * timeout_secs as i64 + 10
}

/// `held_until` for a hold that lasts until the configuration changes.
pub const UNTIL_FIXED: i64 = i64::MAX;
/// `held_until` for an account whose secret was forgotten with a lost key (`key reset`):
/// only a new secret lifts it (neither `account enable` nor `refresh --force` can fetch).
pub const UNTIL_SECRET: i64 = i64::MAX - 1;

/// Whether a `held_until` is one of the holds above rather than a time.
pub fn until_fixed(until: i64) -> bool {
    until >= UNTIL_SECRET
}

/// WeChat allows 20 forced stable-token refreshes a day, at least 30 s apart.
pub const FORCE_PER_DAY: i64 = 20;
pub const FORCE_GAP: i64 = 30;

/// Whether a forced refresh is allowed now, given the times of earlier ones; else why not.
pub fn force_allowed(earlier: &[i64], now: i64) -> Result<(), String> {
    let day_start = next_china_midnight(now) - 86_400;
    let today = earlier.iter().filter(|&&t| t >= day_start).count() as i64;
    if today >= FORCE_PER_DAY {
        return Err(format!(
            "the {FORCE_PER_DAY} forced refreshes WeChat allows per day are spent; \
             more after midnight China time (UTC+8)"
        ));
    }
    if let Some(last) = earlier.iter().max().filter(|&&t| now - t < FORCE_GAP) {
        return Err(format!(
            "the last forced refresh was {}s ago; WeChat needs {FORCE_GAP}s between them",
            now - last
        ));
    }
    Ok(())
}

/// Whether an errcode is worth retrying within the same run.
pub fn errcode_is_transient(errcode: i64) -> bool {
    errcode == -1
}

/// Whether an HTTP status is worth retrying within the same run.
pub fn http_status_is_transient(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

/// What an errcode from a token fetch means for later runs.
pub fn hold_after(errcode: i64) -> Hold {
    match errcode {
        40001 | 40013 | 40125 | 41002 | 41004 | 40091 => Hold::Attention,
        45009 => Hold::UntilQuotaReset,
        89506 => Hold::For(24 * 3600),
        89507 => Hold::For(3600),
        _ => Hold::None,
    }
}

/// What an errcode means for later runs, for an account of `api`: the platform kinds have
/// codes of their own (platforms.md §3). A tenant is held only for what is its own (its
/// credential revoked or invalid, its quota); a failure of its platform's token or
/// configuration holds the platform instead, never each tenant one by one.
pub fn hold_after_for(api: Api, errcode: i64) -> Hold {
    match api {
        Api::Component => match errcode {
            // Wrong appid or secret, IP not registered, an invalid component, the wrong
            // endpoint. (61005/61006, a refused ticket, hold nothing: the platform waits
            // for a newer ticket, `needs_new_ticket`.)
            40001 | 40013 | 40125 | 41002 | 41004 | 61004 | 61011 | 61024 => Hold::Attention,
            45009 => Hold::UntilQuotaReset,
            _ => Hold::None,
        },
        Api::Suite => match errcode {
            40080 | 40083 | 41021..=41024 | 48003 | 60020 => Hold::Attention,
            45009 | 45033 => Hold::For(3600),
            _ => Hold::None,
        },
        Api::Provider => match errcode {
            40013 | 40091 | 41002 | 41004 | 60020 => Hold::Attention,
            45009 | 45033 => Hold::For(3600),
            _ => Hold::None,
        },
        // 61023 after a resync, 61003: needs re-authorization or revoked.
        Api::Authorizer => match errcode {
            61003 | 61023 | 61009 | 61010 => Hold::Attention,
            45009 => Hold::UntilQuotaReset,
            _ => Hold::None,
        },
        Api::Corp => match errcode {
            40084 | 41025 | 48004 => Hold::Attention,
            45009 | 45033 => Hold::For(3600),
            _ => Hold::None,
        },
        Api::Token | Api::Stable | Api::Work => hold_after(errcode),
    }
}

/// Errcodes on a platform's own token call that refuse its ticket (stale, wrong, another
/// platform's): no request until a newer ticket is stored.
pub fn needs_new_ticket(api: Api, errcode: i64) -> bool {
    match api {
        Api::Component => matches!(errcode, 61005 | 61006),
        Api::Suite => errcode == 40085,
        _ => false,
    }
}

/// Errcodes on a tenant's call that are its platform's token going bad: one refetch of
/// the platform token (single-flight), then one retry.
pub fn platform_token_rejected(api: Api, errcode: i64) -> bool {
    match api {
        Api::Authorizer => matches!(errcode, 40001 | 42001 | 40014),
        Api::Corp => matches!(errcode, 42009 | 40082),
        _ => false,
    }
}

/// Errcodes on a tenant's call that concern the whole platform (its IP whitelist, its
/// ticket): the run stops calling for that platform's other tenants.
pub fn platform_wide(api: Api, errcode: i64) -> bool {
    match api {
        Api::Authorizer => matches!(errcode, 61004 | 61005 | 61006 | 61011),
        Api::Corp => matches!(errcode, 60020 | 40085 | 40080 | 40083),
        _ => false,
    }
}

/// What an operator should do about an errcode from a platform kind's token call; `None`
/// for codes with nothing platform-specific to say (`hint` then speaks).
pub fn platform_hint(api: Api, errcode: i64, errmsg: &str) -> Option<String> {
    let ip = ip_in_errmsg(errmsg).unwrap_or("of this server");
    let h = match (api, errcode) {
        (Api::Component, 40001 | 40125) => "the component_appsecret is wrong or was reset: store              the current one with `wxtoken platform set-secret --component ID`"
            .to_string(),
        (Api::Component, 61004) => format!(
            "the IP {ip} is not registered for the third-party platform; add it in the Open              Platform console (development settings > whitelist IPs)"
        ),
        (Api::Component, 61005 | 61006) => "the component_verify_ticket is stale or wrong:              WeChat pushes a new one every 10 minutes to the authorization event URL (see              `wxtoken receive`); `wxtoken platform start-push --component ID` restarts the pushes"
            .to_string(),
        (Api::Authorizer, 40001 | 42001 | 40014) => "the component token was rejected:              something else fetches it with this platform's secret; make wxtoken the only              fetcher"
            .to_string(),
        (Api::Authorizer, 61023) => "the authorizer's refresh token is no longer valid, even              after `authorizer sync`: the merchant must authorize again (`wxtoken authorizer              add --auth-code`); its last token serves until it expires"
            .to_string(),
        (Api::Authorizer, 61003) => "the merchant revoked the authorization; no further              requests are made for it (`wxtoken authorizer add --auth-code` when it authorizes              again)"
            .to_string(),
        (Api::Authorizer | Api::Component, 61009 | 61010) => {
            "the authorization code is invalid or expired (10 minutes, single use)".to_string()
        }
        (Api::Suite, 40085) => "the suite_ticket is older than 30 minutes or another suite's:              WeCom pushes one every 10 minutes to the command callback URL (see `wxtoken              receive`); restart the pushes in the provider console (回调配置 > 刷新ticket推送)"
            .to_string(),
        (Api::Suite, 40080 | 40083) => "the suite_id or suite_secret is wrong: store the              current secret with `wxtoken platform set-secret --suite ID`"
            .to_string(),
        (Api::Corp, 42009 | 40082) => "the suite token was rejected: something else fetches it              with this suite's secret; make wxtoken the only fetcher"
            .to_string(),
        (Api::Corp, 40084) => "the permanent code is invalid: the corp must install the app              again (or, for a 代开发 app, reset its secret: `wxtoken authorizer reset`)"
            .to_string(),
        (Api::Corp, 48004) => "the corp cancelled the authorization; no further requests are              made for it"
            .to_string(),
        (Api::Corp, 41025) => "the permanent code is missing (an empty one was sent)".to_string(),
        (Api::Provider, 40091 | 40013) => "the provider corpid or provider_secret is wrong:              store the current secret with `wxtoken account set-secret`"
            .to_string(),
        _ => return None,
    };
    Some(h)
}

/// `held_until` for a hold that starts at `now` on the store's clock; `None` for no hold.
pub fn held_until(hold: Hold, now: i64) -> Option<i64> {
    match hold {
        Hold::None => None,
        Hold::Attention => Some(UNTIL_FIXED),
        Hold::UntilQuotaReset => Some(next_china_midnight(now)),
        Hold::For(secs) => Some(now.saturating_add(secs)),
    }
}

/// The IP address WeChat names in a whitelist error, if it names one.
/// 40164: `invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist rid: ...`;
/// 60020 (WeCom): `not allow to access from your ip, ... from ip: 203.0.113.7, more info ...`.
pub fn ip_in_errmsg(errmsg: &str) -> Option<&str> {
    let start = ["invalid ip ", "from ip: ", "from ip:"]
        .iter()
        .find_map(|key| errmsg.find(key).map(|i| i + key.len()))?;
    let rest = &errmsg[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    let ip = rest[..end].trim_end_matches([':', '.']);
    (!ip.is_empty()).then_some(ip)
}

/// What an operator should do about an errcode from a token fetch. `None` for codes we do
/// not know: the caller then shows errcode and errmsg verbatim.
pub fn hint(errcode: i64, errmsg: &str) -> Option<String> {
    let ip = ip_in_errmsg(errmsg).unwrap_or("of this server");
    let h = match errcode {
        -1 => "WeChat is busy; retried with backoff, the next run tries again".to_string(),
        40001 | 40125 => "the secret is wrong or was reset in the console; \
                          store the current one with `wxtoken account set-secret`"
            .to_string(),
        40013 => "the appid (or corpid) is invalid; check it in the console, \
                  then remove the account and add it again"
            .to_string(),
        40002 | 43002 => {
            "the request was malformed (a proxy rewriting requests, or a wxtoken bug)".to_string()
        }
        40164 => format!(
            "the IP {ip} is not in the account's IP whitelist; add it in the console \
             (Settings > Basic configuration > IP whitelist)"
        ),
        41002 | 41004 => "a parameter is missing (41002: appid, 41004: secret); \
                          check the account with `wxtoken account list`"
            .to_string(),
        45009 => "the daily quota is used up; it resets at midnight China time (UTC+8), \
                  or clear it with `wxtoken quota reset` (10 a month); `wxtoken quota` shows \
                  whether another program spends it"
            .to_string(),
        45011 => "the per-minute quota is used up; the next run tries again".to_string(),
        89501 => "an administrator has not yet confirmed this IP; try again later".to_string(),
        89503 => "this IP needs an administrator's confirmation in the console".to_string(),
        89506 => "an administrator rejected this IP; blocked for 24 h".to_string(),
        89507 => "an administrator rejected this IP; blocked for 1 h".to_string(),
        40091 => "the WeCom app's secret is invalid; store the current one with \
                  `wxtoken account set-secret`"
            .to_string(),
        60020 => format!(
            "the IP {ip} is not among the WeCom app's trusted IPs; add it in the admin console \
             (App > Trusted IP)"
        ),
        301002 => "the token belongs to another WeCom app: check the account's agentid and \
                   secret"
            .to_string(),
        40014 | 42001 | 42009 => "the token is invalid or expired; get a fresh one with \
                                  `wxtoken get --reject TOKEN`"
            .to_string(),
        _ => return None,
    };
    Some(h)
}

/// What an operator should do about an errcode from a ticket fetch. The token used was
/// fetched moments before, so 40001 there means somebody else invalidated it.
pub fn ticket_hint(errcode: i64, errmsg: &str) -> Option<String> {
    match errcode {
        40001 | 40014 | 42001 | 42009 => Some(
            "the access token was invalidated right after wxtoken fetched it: another program \
             fetches tokens with this account's secret; make wxtoken the only fetcher. The \
             next refresh fetches a new token and this ticket with it"
                .to_string(),
        ),
        _ => hint(errcode, errmsg),
    }
}

/// Makes text from the network safe to print on one line: no control characters, bounded.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_outlives_every_try() {
        assert_eq!(claim_ttl(10), 40);
        assert!(claim_ttl(1) > MAX_TRIES as i64);
    }

    #[test]
    fn backoff_grows_and_jitters() {
        let base = Duration::from_millis(200);
        assert_eq!(backoff(base, 1, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(base, 1, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(base, 2, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(base, 3, 0.5), Duration::from_millis(600));
        assert!(
            backoff(base, 60, 1.0) <= base * 1024,
            "bounded for silly inputs"
        );
    }

    #[test]
    fn china_midnight() {
        // 2026-11-21T15:59:59Z is 23:59:59 in China: reset one second later.
        assert_eq!(next_china_midnight(1_795_276_799), 1_795_276_800);
        // Exactly at the reset the next one is a day away.
        assert_eq!(next_china_midnight(1_795_276_800), 1_795_276_800 + 86_400);
    }

    #[test]
    fn force_budget() {
        let now = 1_795_276_000; // 23:46:40 in China
        assert!(force_allowed(&[], now).is_ok());
        assert!(force_allowed(&[now - 29], now).unwrap_err().contains("30s"));
        assert!(force_allowed(&[now - 30], now).is_ok());
        let spent: Vec<i64> = (1..=20).map(|i| now - 40 * i).collect();
        assert!(
            force_allowed(&spent, now)
                .unwrap_err()
                .contains("20 forced")
        );
        // Yesterday's (China time) do not count.
        let yesterday: Vec<i64> = (1..=20).map(|i| now - 86_400 - i).collect();
        assert!(force_allowed(&yesterday, now).is_ok());
    }

    #[test]
    fn holds() {
        assert_eq!(hold_after(40125), Hold::Attention);
        assert_eq!(hold_after(40001), Hold::Attention);
        assert_eq!(held_until(hold_after(40001), 100), Some(UNTIL_FIXED));
        assert_eq!(held_until(hold_after(89507), 100), Some(3700));
        assert_eq!(held_until(hold_after(89506), 100), Some(86_500));
        assert_eq!(
            hold_after(40164),
            Hold::None,
            "ops may fix the whitelist any time"
        );
        assert_eq!(held_until(hold_after(45011), 100), None);
        // 45009: until the next midnight in China, wherever in the day it came.
        let now = 1_700_000_000;
        assert_eq!(
            held_until(hold_after(45009), now),
            Some(next_china_midnight(now))
        );
    }

    #[test]
    fn transient_classes() {
        assert!(errcode_is_transient(-1));
        for code in [40001, 40013, 40125, 40164, 45009, 45011, 41002] {
            assert!(!errcode_is_transient(code), "{code}");
        }
        assert!(http_status_is_transient(502));
        assert!(http_status_is_transient(500));
        assert!(!http_status_is_transient(404));
    }

    #[test]
    fn ip_extraction() {
        let msg = "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist rid: 1";
        assert_eq!(ip_in_errmsg(msg), Some("203.0.113.7"));
        let wecom = "not allow to access from your ip, hint: [x], from ip: 198.51.100.4, more info";
        assert_eq!(ip_in_errmsg(wecom), Some("198.51.100.4"));
        assert_eq!(ip_in_errmsg("invalid appid"), None);
        assert!(hint(40164, msg).unwrap().contains("203.0.113.7"));
        assert!(hint(40125, "").unwrap().contains("set-secret"));
        assert_eq!(hint(12345, "whatever"), None);
        assert!(ticket_hint(40001, "").unwrap().contains("another program"));
        assert!(!ticket_hint(40001, "").unwrap().contains("set-secret"));
        assert_eq!(ticket_hint(45009, ""), hint(45009, ""));
    }

    #[test]
    fn one_line_strips_controls_and_bounds() {
        assert_eq!(one_line("a\nb\x1b[31m", 100), "a b [31m");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }
}
