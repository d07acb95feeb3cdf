//! Whether a stored token can still be trusted, and whether refresh should replace it.
//! Pure: `now` is an argument (Unix seconds), and the stored row is passed in as numbers.
//!
//! A row's own `expires_at` is not the whole story. The clock may have stepped back since
//! the fetch (NTP, a VM restored from a snapshot), and on the classic API a fetch that
//! reached WeChat without being recorded has killed the stored token 300 s later.

/// On the classic API, WeChat keeps the previous token alive this long after a new fetch.
pub const CLASSIC_GRACE: i64 = 300;

/// A row fetched up to this far in the future still counts as fetched now: clocks of
/// machines sharing a database differ by a little.
pub const FUTURE_SLACK: i64 = 60;

/// When the local clock and WeChat's `Date` header differ by more than this, say so.
pub const CLOCK_WARN: i64 = 60;

/// What is known about the newest stored token of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub fetched_at: i64,
    pub expires_in: i64,
    pub expires_at: i64,
    /// When an unfinished fetch of this account started, if one is open: its token may
    /// have replaced this one at WeChat.
    pub unfinished_fetch: Option<i64>,
    /// Whether the account uses the classic API, where a new token kills the old one.
    pub classic: bool,
}

impl Stored {
    /// Whether the row claims to have been fetched in the future: the clock stepped back.
    pub fn fetched_in_the_future(&self, now: i64) -> bool {
        self.fetched_at > now.saturating_add(FUTURE_SLACK)
    }

    /// When the token stops being usable as far as we can tell: its own expiry, never later
    /// than its lifetime from its fetch, and on the classic API never later than 300 s after
    /// an unfinished fetch started.
    pub fn trusted_until(&self) -> i64 {
        let mut end = self
            .expires_at
            .min(self.fetched_at.saturating_add(self.expires_in));
        if self.classic
            && let Some(started) = self.unfinished_fetch
        {
            end = end.min(started.saturating_add(CLASSIC_GRACE));
        }
        end
    }

    /// Seconds the token has left at `now` (negative once it is dead), never more than its
    /// lifetime; `None` when the row was fetched in the future, so nothing is known.
    pub fn left(&self, now: i64) -> Option<i64> {
        if self.fetched_in_the_future(now) {
            return None;
        }
        Some((self.trusted_until() - now).min(self.expires_in))
    }

    /// Whether an unfinished fetch shortened this token's life.
    pub fn cut_short(&self) -> bool {
        self.trusted_until() < self.expires_at.min(self.fetched_at + self.expires_in)
    }
}

/// Whether a token may be handed out at `now`: alive, and at least `min_ttl` seconds left.
pub fn usable(stored: &Stored, now: i64, min_ttl: i64) -> bool {
    stored
        .left(now)
        .is_some_and(|left| left > 0 && left >= min_ttl)
}

/// Which accounts a refresh fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Every account, unless a run inserted its newest token after this run started: token
    /// rows with an id above `newest_at_start` (the largest id when this run began) did.
    /// Row ids, not times, so that a clock step cannot make an old row look new.
    Due { newest_at_start: i64 },
    /// Only accounts whose newest token expires within this many seconds.
    ExpiringWithin(i64),
    /// Every account, whatever its newest token (`--force`).
    Always,
}

/// Whether an account should be fetched now, given its newest token (row id and what is
/// known about it), whether something asked for a fetch (set-secret, enable), and `want`.
/// A dead token, one fetched in the future, and one an unfinished fetch may have replaced
/// are always due: refresh must never call them fresh.
pub fn needs_fetch(newest: Option<(i64, Stored)>, asked: bool, now: i64, want: Want) -> bool {
    let Some((id, stored)) = newest else {
        return true;
    };
    if asked || want == Want::Always || stored.unfinished_fetch.is_some() {
        return true;
    }
    let Some(left) = stored.left(now) else {
        return true;
    };
    match want {
        _ if left <= 0 => true,
        Want::Due { newest_at_start } => id <= newest_at_start,
        Want::ExpiringWithin(window) => left <= window,
        Want::Always => true,
    }
}

/// The clock offset worth a warning, if this one is.
pub fn clock_warning(offset: Option<i64>) -> Option<i64> {
    offset.filter(|o| o.unsigned_abs() > CLOCK_WARN as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn row(fetched_ago: i64) -> Stored {
        Stored {
            fetched_at: NOW - fetched_ago,
            expires_in: 7200,
            expires_at: NOW - fetched_ago + 7200,
            unfinished_fetch: None,
            classic: true,
        }
    }

    #[test]
    fn time_left_is_never_more_than_the_lifetime() {
        assert_eq!(row(100).left(NOW), Some(7100));
        // Fetched 30 s "in the future" (within the slack): capped at the lifetime.
        assert_eq!(row(-30).left(NOW), Some(7200));
        // Beyond the slack nothing is known.
        assert_eq!(row(-61).left(NOW), None);
        assert!(!usable(&row(-3600), NOW, 0));
        assert!(usable(&row(7199), NOW, 0));
        assert!(
            !usable(&row(7200), NOW, 0),
            "a token is dead at its expiry instant"
        );
        assert!(usable(&row(6900), NOW, 300));
        assert!(!usable(&row(6901), NOW, 300));
        // An expires_at inconsistent with the lifetime is not believed.
        let odd = Stored {
            expires_at: NOW + 999_999,
            ..row(100)
        };
        assert_eq!(odd.left(NOW), Some(7100));
    }

    #[test]
    fn an_unfinished_classic_fetch_caps_the_old_token() {
        let mut r = row(3600);
        r.unfinished_fetch = Some(NOW - 100);
        assert_eq!(r.left(NOW), Some(200));
        assert!(r.cut_short());
        assert!(usable(&r, NOW, 200));
        assert!(!usable(&r, NOW, 201));
        r.unfinished_fetch = Some(NOW - 300);
        assert!(!usable(&r, NOW, 0));
        // The stable API and WeCom keep the old token alive.
        r.classic = false;
        assert_eq!(r.left(NOW), Some(3600));
        assert!(!r.cut_short());
    }

    #[test]
    fn refresh_decisions() {
        let fresh = row(10);
        let due = |r: &Stored, id, asked, want| needs_fetch(Some((id, *r)), asked, NOW, want);
        let run = Want::Due { newest_at_start: 5 };
        assert!(needs_fetch(None, false, NOW, run));
        // Fetched by another run after this one started: not due; before: due, however young.
        assert!(!due(&fresh, 6, false, run));
        assert!(due(&fresh, 5, false, run));
        assert!(due(&fresh, 6, true, run), "set-secret / enable make it due");
        assert!(due(&fresh, 6, false, Want::Always));
        assert!(due(&row(-3600), 6, false, run), "fetched in the future");
        assert!(due(&row(8000), 6, false, run), "expired");
        let mut unfinished = fresh;
        unfinished.unfinished_fetch = Some(NOW);
        assert!(due(&unfinished, 6, false, run));
        assert!(due(&unfinished, 6, false, Want::ExpiringWithin(300)));
        let window = Want::ExpiringWithin(300);
        assert!(!due(&row(7200 - 301), 6, false, window));
        assert!(due(&row(7200 - 300), 6, false, window));
        assert!(due(&row(-3600), 6, false, window));
        assert!(due(&fresh, 6, true, window));
    }

    #[test]
    fn clock_warnings() {
        assert_eq!(clock_warning(None), None);
        assert_eq!(clock_warning(Some(60)), None);
        assert_eq!(clock_warning(Some(-61)), Some(-61));
    }
}
