//! The platform model's store operations, each test run on SQLite and on PostgreSQL (a
//! database of the test server; without PostgreSQL installed that half is skipped, under
//! CI=true it fails): sealing of every platform secret under `key rotate` and `key reset`,
//! the ticket's keep-newer rule, the events' bound, removing platforms, and recording a
//! renewed refresh token against a re-authorization that raced in.

use std::collections::BTreeSet;

use super::{Claim, Location, Store, StoreError, TicketStored, open_write};
use crate::crypto::{Key, Keyring};
use crate::domain::{
    AccountKey, Api, Credential, FetchRecord, Fetched, NewAccount, Outcome, Secret,
};

/// Runs `body` on a new SQLite file and on a new PostgreSQL database.
fn on_both(name: &str, body: fn(&dyn Store)) {
    let dir = std::env::temp_dir().join(format!(
        "wxtoken-platform-store-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let at = Location::File {
        path: dir.join("wxtoken.db"),
        is_default: false,
    };
    body(open_write(&at, true).unwrap().as_ref());
    let _ = std::fs::remove_dir_all(&dir);
    #[cfg(feature = "postgres")]
    if let Some(server) = wxtoken_standin::pg::server() {
        let db = server.create_db();
        let config = crate::store::postgres::conf::PgConfig::from_env(&db.url).unwrap();
        body(
            open_write(&Location::Postgres(Box::new(config)), true)
                .unwrap()
                .as_ref(),
        );
    }
}

fn ring() -> Keyring {
    Keyring::new(vec![Key::generate()])
}

fn kid(ring: &Keyring) -> String {
    ring.current().kid.clone()
}

fn secret(s: &str) -> Secret {
    Secret::new(s.to_string())
}

fn add(store: &dyn Store, key: &AccountKey, api: Api, value: &str, platform: Option<i64>) -> i64 {
    let new = NewAccount {
        key: key.clone(),
        api,
        secret: secret(value),
        tickets: vec![],
        platform,
        receiver: None,
    };
    store.add_account(&new, 1).unwrap();
    store.require_account(key).unwrap().id
}

fn component() -> AccountKey {
    AccountKey::appid("wxcomponent00001").unwrap()
}

fn authorizer() -> AccountKey {
    AccountKey {
        appid: "wxauthorizer0001".into(),
        agent: component().appid,
    }
}

/// A successful authorizer fetch made with `used`, WeChat handing back `renewed`.
fn renewal(id: i64, token: &str, used: &str, renewed: Option<&str>) -> FetchRecord {
    FetchRecord {
        account_id: id,
        kind: Credential::AccessToken,
        outcome: Outcome {
            result: Ok(Fetched {
                token: token.into(),
                expires_in: 7200,
                renewed: renewed.map(secret),
            }),
            tries: 1,
            sent_at: 10,
            started_at: 10,
            duration_ms: 5,
            unsure: false,
            clock_offset: None,
        },
        hold: None,
        secret: secret(used),
    }
}

/// Records `record` under this process's claim (PostgreSQL fences on it).
fn record(store: &dyn Store, record: &FetchRecord) {
    assert_eq!(
        store.claim(record.account_id, 10, 60).unwrap(),
        Claim::Claimed
    );
    store.record_fetch(record).unwrap();
    store.release(record.account_id).unwrap();
}

fn current_and_previous(store: &dyn Store, key: &AccountKey) -> (String, Option<String>) {
    let a = store.require_account(key).unwrap();
    assert!(a.secret.locked_kid().is_none(), "{key}: secret locked");
    let previous = a.previous_secret.map(|p| {
        assert!(p.locked_kid().is_none(), "{key}: previous locked");
        p.expose().to_string()
    });
    (a.secret.expose().to_string(), previous)
}

/// A component and an authorizer whose every sealed value is sealed with a key of its own:
/// the component's secret, its ticket, its push crypto, the authorizer's previous refresh
/// token, and its current one. Returns the rings, in that order, and the ids.
fn five_keys(store: &dyn Store) -> (Vec<Keyring>, i64, i64) {
    let rings: Vec<Keyring> = (0..5).map(|_| ring()).collect();
    let keys = store.keys();
    keys.install(rings[1].clone());
    let c = add(store, &component(), Api::Component, "csecret", None);
    store
        .set_platform_ticket(c, &secret("ticket-1"), 100, 1)
        .unwrap();
    keys.install(rings[0].clone());
    store
        .set_secret(&component(), &secret("csecret"), 2)
        .unwrap();
    keys.install(rings[2].clone());
    store
        .set_platform_crypto(c, &secret("msgtoken"), &secret(&"k".repeat(43)), 3)
        .unwrap();
    keys.install(rings[3].clone());
    let a = add(store, &authorizer(), Api::Authorizer, "refresh-1", Some(c));
    // Ring 4 seals, ring 3 still opens the refresh token the fetch used.
    keys.install(Keyring::new(vec![
        rings[4].current().clone(),
        rings[3].current().clone(),
    ]));
    // WeChat rotates the refresh token: refresh-1 (sealed with ring 3) becomes the previous.
    record(store, &renewal(a, "T1", "refresh-1", Some("refresh-2")));
    // Every ring opens what it sealed: the store's keys hold them all from now on.
    let all: Vec<Key> = rings.iter().map(|r| r.current().clone()).collect();
    keys.install(Keyring::new(all));
    (rings, c, a)
}

fn kids(rings: &[Keyring]) -> BTreeSet<String> {
    rings.iter().map(kid).collect()
}

/// `sealed_kids` is what `key rotate` keeps keys by: every sealed column counts, or a key
/// still used by a ticket, push crypto or a previous refresh token would be dropped.
#[test]
fn sealed_kids_names_every_sealed_column() {
    on_both("kids", |store| {
        let (rings, _, _) = five_keys(store);
        assert_eq!(store.sealed_kids().unwrap(), kids(&rings));
    });
}

/// `key rotate`'s reseal moves every sealed value to the new key, and each still opens to
/// what it was.
#[test]
fn a_rotation_reseals_tickets_crypto_and_previous_secrets() {
    on_both("rotate", |store| {
        let (rings, c, _) = five_keys(store);
        let next = Keyring::new(
            std::iter::once(Key::generate())
                .chain(rings.iter().map(|r| r.current().clone()))
                .collect(),
        );
        store.keys().install(next.clone());
        assert!(store.reseal(true).unwrap() >= 2);
        assert_eq!(store.sealed_kids().unwrap(), BTreeSet::from([kid(&next)]));
        // Only the new key from now on: everything opens with it alone.
        store
            .keys()
            .install(Keyring::new(vec![next.current().clone()]));
        let ticket = store.platform_ticket(c).unwrap().unwrap();
        assert_eq!(ticket.ticket.expose(), "ticket-1");
        assert_eq!(ticket.create_time, 100);
        let crypto = store.platform_crypto(c).unwrap().unwrap();
        assert_eq!(crypto.token.expose(), "msgtoken");
        assert_eq!(crypto.aes_key.expose(), "k".repeat(43));
        assert_eq!(
            current_and_previous(store, &authorizer()),
            ("refresh-2".into(), Some("refresh-1".into()))
        );
        assert_eq!(current_and_previous(store, &component()).0, "csecret");
        // A plaintext check is about account secrets and sinks: unaffected.
        assert!(!store.has_plaintext().unwrap());
    });
}

/// `key reset`: a ticket, push crypto and a previous credential sealed with the lost key
/// are forgotten with it, so that no key is needed for them any more.
#[test]
fn a_reset_forgets_tickets_crypto_and_previous_secrets() {
    on_both("reset", |store| {
        let (_, c, _) = five_keys(store);
        store.forget_sealed("lost").unwrap();
        assert!(store.sealed_kids().unwrap().is_empty());
        assert!(store.platform_ticket(c).unwrap().is_none());
        assert!(store.ticket_times(c).unwrap().is_none());
        assert!(store.platform_crypto(c).unwrap().is_none());
        let a = store.require_account(&authorizer()).unwrap();
        assert!(a.previous_secret.is_none());
        assert_eq!(a.secret.locked_kid(), Some(crate::crypto::LOST_KID));
        assert!(store.sealed_sample(None).unwrap().is_none());
    });
}

/// Pushes arrive out of order: only a later create time replaces the stored ticket.
#[test]
fn an_older_or_equal_ticket_never_replaces_a_newer_one() {
    on_both("ticket", |store| {
        store.keys().install(ring());
        let c = add(store, &component(), Api::Component, "csecret", None);
        let set = |t: &str, at: i64| store.set_platform_ticket(c, &secret(t), at, at).unwrap();
        assert_eq!(set("t-200", 200), TicketStored::Stored);
        assert_eq!(set("t-100", 100), TicketStored::Kept);
        assert_eq!(set("t-200b", 200), TicketStored::Kept);
        let ticket = store.platform_ticket(c).unwrap().unwrap();
        assert_eq!((ticket.ticket.expose(), ticket.create_time), ("t-200", 200));
        assert_eq!(set("t-300", 300), TicketStored::Stored);
        assert_eq!(store.ticket_times(c).unwrap(), Some((300, 300)));
        assert!(store.set_platform_ticket(c, &secret(""), 400, 400).is_err());
    });
}

/// A platform keeps its newest 1,000 events, however many it records.
#[test]
fn platform_events_keep_the_newest_thousand() {
    on_both("events", |store| {
        store.keys().install(ring());
        let c = add(store, &component(), Api::Component, "csecret", None);
        for i in 0..1005 {
            store
                .record_platform_event(c, i, "ticket", None, None)
                .unwrap();
        }
        let events = store.platform_events(c, 5000).unwrap();
        assert_eq!(events.len(), 1000);
        assert_eq!((events[0].at, events[999].at), (1004, 5));
    });
}

/// `account remove` of a platform with tenants says what to do; `remove_platform` removes
/// the tenants first, then the platform with its ticket, crypto and events (cascades).
#[test]
fn removing_a_platform_with_tenants() {
    on_both("remove", |store| {
        store.keys().install(ring());
        let c = add(store, &component(), Api::Component, "csecret", None);
        add(store, &authorizer(), Api::Authorizer, "refresh-1", Some(c));
        store
            .set_platform_ticket(c, &secret("ticket"), 100, 100)
            .unwrap();
        store
            .set_platform_crypto(c, &secret("tok"), &secret(&"k".repeat(43)), 1)
            .unwrap();
        store
            .record_platform_event(c, 1, "authorized", Some("wxauthorizer0001"), None)
            .unwrap();
        let err = store.remove_account(&component()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::HasTenants(_)), "{err:?}");
        assert!(
            text.contains(
                "wxtoken platform remove --component wxcomponent00001 --with-authorizers"
            ) && !text.contains('\n')
                && !text.to_lowercase().contains("foreign key"),
            "{text}"
        );
        assert!(store.account(&component()).unwrap().is_some());
        // A tenant alone is an ordinary removal.
        let other = AccountKey {
            appid: "wxauthorizer0002".into(),
            agent: component().appid,
        };
        add(store, &other, Api::Authorizer, "refresh-2", Some(c));
        store.remove_account(&other).unwrap();
        assert_eq!(store.remove_platform(&component()).unwrap(), 1);
        assert!(store.account(&component()).unwrap().is_none());
        assert!(store.account(&authorizer()).unwrap().is_none());
        assert!(store.ticket_times(c).unwrap().is_none());
        assert!(store.platform_crypto(c).unwrap().is_none());
        assert!(store.platform_events(c, 10).unwrap().is_empty());
        // A platform without tenants goes by `account remove` too.
        add(store, &component(), Api::Component, "csecret", None);
        store.remove_account(&component()).unwrap();
    });
}

/// A renewed refresh token is stored by the transaction that records its token, and only
/// while the stored credential is the one the fetch used (or its previous one): a
/// re-authorization stored meanwhile is never undone, whichever of the two the fetch used.
#[test]
fn a_renewal_never_undoes_a_reauthorization_that_raced_in() {
    on_both("renewal", |store| {
        store.keys().install(ring());
        let c = add(store, &component(), Api::Component, "csecret", None);
        let a = add(store, &authorizer(), Api::Authorizer, "refresh-1", Some(c));
        let newest = |store: &dyn Store| {
            store
                .latest_token(&authorizer(), Credential::AccessToken)
                .unwrap()
                .map(|t| t.token)
        };

        // Plain rotation: the token and the new refresh token together.
        record(store, &renewal(a, "T1", "refresh-1", Some("refresh-2")));
        assert_eq!(newest(store).as_deref(), Some("T1"));
        assert_eq!(
            current_and_previous(store, &authorizer()),
            ("refresh-2".into(), Some("refresh-1".into()))
        );

        // A fetch with refresh-2 is under way; the merchant re-authorizes (set_secret)
        // before it is recorded: its renewal must not replace the new authorization.
        store
            .set_secret(&authorizer(), &secret("reauth-1"), 20)
            .unwrap();
        record(store, &renewal(a, "T2", "refresh-2", Some("refresh-3")));
        assert_eq!(newest(store).as_deref(), Some("T2"));
        assert_eq!(
            current_and_previous(store, &authorizer()),
            ("reauth-1".into(), None)
        );

        // The same with a fetch that fell back to the previous refresh token (after
        // 61023): rotate once more so that there is a previous one, then race again.
        record(store, &renewal(a, "T3", "reauth-1", Some("reauth-2")));
        assert_eq!(
            current_and_previous(store, &authorizer()),
            ("reauth-2".into(), Some("reauth-1".into()))
        );
        store
            .set_secret(&authorizer(), &secret("reauth-3"), 30)
            .unwrap();
        record(store, &renewal(a, "T4", "reauth-1", Some("reauth-4")));
        assert_eq!(
            current_and_previous(store, &authorizer()),
            ("reauth-3".into(), None),
            "a fetch with the previous refresh token undid a re-authorization"
        );
        // And a fetch with the current one that worked drops a previous one.
        record(store, &renewal(a, "T5", "reauth-3", Some("reauth-5")));
        record(store, &renewal(a, "T6", "reauth-5", None));
        assert_eq!(
            current_and_previous(store, &authorizer()),
            ("reauth-5".into(), None)
        );
        // An empty refresh token never replaces one.
        record(store, &renewal(a, "T7", "reauth-5", Some("")));
        assert_eq!(current_and_previous(store, &authorizer()).0, "reauth-5");
    });
}
