//! Pure decisions about WeChat's daily quota: the quota day and month, which quota an
//! account's fetches count against, when WeChat's count means another fetcher, and what
//! the quota tools' errcodes mean. No I/O and no clock; `now` is an argument.

use chrono::{Datelike, FixedOffset, TimeZone};

use crate::domain::Api;
use crate::policy;

/// WeChat allows 10 quota resets a month per account, across `clear_quota` and
/// `clear_quota/v2` together; beyond that it answers 48006.
pub const RESETS_PER_MONTH: i64 = 10;

/// WeChat's count must exceed wxtoken's own by at least this many fetches...
pub const FOREIGN_MIN_EXCESS: i64 = 5;
/// ...and by at least this share of wxtoken's own count, in percent, before `quota` says
/// another fetcher uses the appid. The margin absorbs what is not a second fetcher: WeChat
/// says its live counts may be off by up to 1 %, and a fetch wxtoken sent around midnight
/// may land on the other side of WeChat's day boundary.
pub const FOREIGN_MIN_SHARE: i64 = 10;

/// `quota` warns once WeChat counts this share of the daily limit as used, in percent:
/// enough left to act (find the other fetcher, or reset) before 45009 stops every fetch.
pub const WARN_SHARE: i64 = 80;

/// The daily token quota WeChat documents for an account's token path (2,000 a day for
/// `/cgi-bin/token`, 500,000 for `/cgi-bin/stable_token`); `None` for WeCom apps. WeChat's
/// live figure, which `quota` asks for, may differ: `status --check` uses this one because
/// it makes no call to WeChat.
pub fn documented_daily_limit(api: Api) -> Option<i64> {
    match api {
        Api::Token => Some(2_000),
        Api::Stable => Some(500_000),
        _ => None,
    }
}

const CHINA: i32 = 8 * 3600;

/// Unix seconds of the last midnight China time (UTC+8): the start of the quota day.
pub fn day_start(now: i64) -> i64 {
    policy::next_china_midnight(now) - 86_400
}

/// Unix seconds of the start of the calendar month, China time, that `now` falls in:
/// WeChat's "10 resets a month" is counted from there.
pub fn month_start(now: i64) -> i64 {
    let china = FixedOffset::east_opt(CHINA).expect("UTC+8 is a valid offset");
    let Some(local) = china.timestamp_opt(now, 0).single() else {
        return day_start(now);
    };
    china
        .with_ymd_and_hms(local.year(), local.month(), 1, 0, 0, 0)
        .single()
        .map_or_else(|| day_start(now), |t| t.timestamp())
}

/// The `cgi_path` whose quota an account's token fetches use; `None` for WeCom apps,
/// which WeChat's quota tools do not cover.
pub fn cgi_path(api: Api) -> Option<&'static str> {
    match api {
        Api::Token => Some("/cgi-bin/token"),
        Api::Stable => Some("/cgi-bin/stable_token"),
        _ => None,
    }
}

/// How many more fetches WeChat counted today than wxtoken made, when that is enough to
/// say that something else fetches tokens for the appid (see the thresholds above).
pub fn foreign_fetches(used: i64, own: i64) -> Option<i64> {
    let excess = used - own;
    let margin = FOREIGN_MIN_EXCESS.max((own * FOREIGN_MIN_SHARE + 99) / 100);
    (excess >= margin).then_some(excess)
}

/// Whether `used` has reached `WARN_SHARE` percent of `daily_limit`. A limit of 0 is not
/// warned about: WeChat's own documentation shows all-zero quotas for APIs it does not
/// ration, so 0 does not mean "nothing left".
pub fn near_limit(used: i64, daily_limit: i64) -> bool {
    daily_limit > 0 && used * 100 >= daily_limit * WARN_SHARE
}

/// What to do about an errcode from `quota/get`.
pub fn check_hint(errcode: i64, errmsg: &str, cgi_path: &str) -> Option<String> {
    let h = match errcode {
        76021 => format!(
            "WeChat does not know the cgi_path {cgi_path} and reports no quota for it; \
             check the account's API with `wxtoken account list`"
        ),
        76022 => format!(
            "this token may not read the quota of {cgi_path}: it belongs to another kind of \
             account (a Mini Program's token for an Official Account's API, or the reverse)"
        ),
        76003 => format!("the cgi_path {cgi_path} is malformed (a wxtoken bug)"),
        40001 | 40014 | 42001 => "WeChat rejected the stored token although it has not \
             expired: something else fetched a newer token for this appid since wxtoken's \
             last refresh (or the secret was reset). Make wxtoken the only fetcher; \
             `wxtoken refresh --force --appid ...` stores a new token"
            .to_string(),
        45009 => "the quota API's own daily quota is used up; try again after midnight \
                  China time (UTC+8)"
            .to_string(),
        -1 => "WeChat is busy; retried with backoff, try again later".to_string(),
        _ => return policy::hint(errcode, errmsg),
    };
    Some(h)
}

/// What to do about an errcode from `clear_quota/v2`.
pub fn reset_hint(errcode: i64, errmsg: &str) -> Option<String> {
    let h = match errcode {
        48006 => format!(
            "this month's {RESETS_PER_MONTH} quota resets are spent (resets in the console or \
             by other tools count too); the daily quota itself resets at midnight China time \
             (UTC+8)"
        ),
        40013 => "the appid is invalid; check it in the console".to_string(),
        40001 | 40125 => "the secret is wrong or was reset in the console; store the current \
                          one with `wxtoken account set-secret`, then reset again"
            .to_string(),
        -1 => {
            "WeChat is busy; retried with backoff, try again later (no reset was spent)".to_string()
        }
        _ => return policy::hint(errcode, errmsg),
    };
    Some(h)
}

/// Whether an answer to the confirmation prompt is a yes.
pub fn confirmed(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Whether a quota check's errcode says the token it used is dead (replaced by another
/// fetcher's, or expired early), not merely that the call failed.
pub fn token_is_dead(errcode: i64) -> bool {
    matches!(errcode, 40001 | 40014 | 42001)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-21T15:59:59Z is 23:59:59 on the 21st in China.
    const LAST_SECOND: i64 = 1_795_276_799;

    #[test]
    fn the_quota_day_starts_at_midnight_china_time() {
        assert_eq!(day_start(LAST_SECOND), LAST_SECOND + 1 - 86_400);
        assert_eq!(day_start(LAST_SECOND + 1), LAST_SECOND + 1);
        // 08:00 UTC is already 16:00 in China: same day as 00:00 UTC.
        let midnight_utc = 1_795_219_200; // 2026-11-21T00:00:00Z
        assert_eq!(day_start(midnight_utc), day_start(midnight_utc + 8 * 3600));
    }

    #[test]
    fn the_month_starts_on_the_first_china_time() {
        // 2026-11-30T16:00:00Z is 2026-12-01T00:00 in China.
        let december = 1_796_054_400;
        assert_eq!(month_start(december), december);
        assert_eq!(month_start(december + 10 * 86_400), december);
        // One second earlier is still November: 2026-11-01T00:00+08:00.
        assert_eq!(month_start(december - 1), 1_793_462_400);
    }

    #[test]
    fn foreign_fetches_need_a_clear_excess() {
        assert_eq!(foreign_fetches(24, 24), None);
        assert_eq!(foreign_fetches(28, 24), None, "within 5");
        assert_eq!(foreign_fetches(29, 24), Some(5));
        assert_eq!(
            foreign_fetches(0, 24),
            None,
            "after a reset WeChat counts less"
        );
        // With many own fetches the 10 % share decides: 200 own need 20 more.
        assert_eq!(foreign_fetches(219, 200), None);
        assert_eq!(foreign_fetches(220, 200), Some(20));
        assert_eq!(foreign_fetches(5, 0), Some(5));
    }

    #[test]
    fn warns_from_the_share_on() {
        assert!(!near_limit(1599, 2000));
        assert!(near_limit(1600, 2000));
        assert!(near_limit(2000, 2000));
        assert!(!near_limit(0, 0), "WeChat's example for an unrationed API");
    }

    #[test]
    fn paths_and_hints() {
        assert_eq!(cgi_path(Api::Token), Some("/cgi-bin/token"));
        assert_eq!(cgi_path(Api::Stable), Some("/cgi-bin/stable_token"));
        assert_eq!(cgi_path(Api::Work), None);
        let unknown = check_hint(76021, "cgi_path not found", "/cgi-bin/token").unwrap();
        assert!(unknown.contains("/cgi-bin/token"), "{unknown}");
        assert!(
            check_hint(40001, "", "/cgi-bin/token")
                .unwrap()
                .contains("something else fetched")
        );
        assert!(reset_hint(48006, "").unwrap().contains("10 quota resets"));
        assert!(reset_hint(40125, "").unwrap().contains("set-secret"));
        assert!(reset_hint(40001, "").unwrap().contains("set-secret"));
        assert!(reset_hint(40013, "").unwrap().contains("appid"));
        assert_eq!(reset_hint(41004, ""), policy::hint(41004, ""));
        assert_eq!(reset_hint(12345, ""), None);
    }

    #[test]
    fn only_yes_confirms() {
        for yes in ["y", "Y", "yes", " YES \n"] {
            assert!(confirmed(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yess", "ok"] {
            assert!(!confirmed(no), "{no:?}");
        }
    }
}
