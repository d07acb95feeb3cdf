//! Receiving WeChat's encrypted pushes (issue 21): the component_verify_ticket and
//! authorization events of Open Platform, the suite_ticket and auth events of WeCom.
//!
//! Pure layers only, each usable on its own: `http` reads the one request of an inetd-style
//! `wxtoken receive`, `crypto` checks and opens WXBizMsgCrypt, `xml` reads the flat `<xml>`
//! bodies (outer and decrypted) without ever expanding an entity, `event` types the
//! decrypted fields. Nothing here touches the store or the CLI; the commands that do
//! (`platform ingest`, `receive`) are built on top. See docs platforms.md §5.

// Not called by a command yet: `platform ingest` and `receive` are wired on later.
#![allow(dead_code)]

pub mod crypto;
pub mod event;
pub mod http;
pub mod xml;

use std::fmt;

/// A value pushed to us that must never be printed: a ticket, an authorization code.
/// `Debug` and `Display` show `***`; only `expose` gives the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Hidden(String);

impl Hidden {
    pub fn new(value: String) -> Self {
        Hidden(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_never_prints_its_value() {
        let h = Hidden::new("ticket@@@secret".into());
        assert_eq!(format!("{h:?} {h}"), "*** ***");
        assert_eq!(h.expose(), "ticket@@@secret");
    }
}
