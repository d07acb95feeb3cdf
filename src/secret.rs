//! Secrets and tokens: types and helpers that keep them out of every output.

pub use crate::domain::Secret;

/// A short, stable fingerprint of a token for logs: enough to tell two tokens apart,
/// useless to call WeChat with. FNV-1a, because it needs no crate and no key.
pub fn fingerprint(token: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in token.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("tok:{:08x}", hash >> 32)
}

/// How a listing shows a secret: which key encrypted it, or that it is still stored in
/// plain text (by a version before encryption, until the next writing command). Never its
/// length: that would say something about a secret a reader must not learn. A PostgreSQL
/// reader role never reads the secrets: "(no access)".
pub fn mask(secret: &Secret) -> String {
    match secret.locked_kid() {
        Some(crate::crypto::LOST_KID) => "LOST".to_string(),
        Some(kid) => format!("encrypted:{kid}"),
        None if secret.expose().is_empty() => "(no access)".to_string(),
        None => "PLAINTEXT".to_string(),
    }
}

/// Removes every trace of `secret` from a text that may have come from a library
/// (an error message can quote a URL), and any `secret=`/`corpsecret=` query value.
pub fn scrub(text: &str, secret: &Secret) -> String {
    let mut out = if secret.expose().is_empty() {
        text.to_string()
    } else {
        text.replace(secret.expose(), "***")
    };
    for key in ["secret=", "corpsecret="] {
        let mut from = 0;
        while let Some(pos) = out[from..].find(key) {
            let start = from + pos + key.len();
            let end = out[start..]
                .find(['&', ' ', '"', ')', '\''])
                .map_or(out.len(), |e| start + e);
            out.replace_range(start..end, "***");
            from = start + 3;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_hides_the_secret() {
        let s = Secret::new("0123456789abcdef0123456789abcdef".into());
        assert!(!mask(&s).contains("0123"));
        assert_eq!(mask(&s), "PLAINTEXT");
        assert_eq!(mask(&Secret::new(String::new())), "(no access)");
        assert_eq!(
            mask(&Secret::locked("a1b2c3d4".into())),
            "encrypted:a1b2c3d4"
        );
    }

    #[test]
    fn scrub_removes_secret_and_query_values() {
        let s = Secret::new("topsecretvalue".into());
        let text = "GET http://h/cgi-bin/token?appid=wx1&secret=topsecretvalue&x=1 failed";
        let out = scrub(text, &s);
        assert!(!out.contains("topsecretvalue"), "{out}");
        assert!(out.contains("appid=wx1&secret=***&x=1"), "{out}");
        let out = scrub("corpsecret=abc and secret=other", &s);
        assert_eq!(out, "corpsecret=*** and secret=***");
    }

    #[test]
    fn fingerprint_is_short_and_distinguishes() {
        let a = fingerprint("token-a");
        assert_eq!(a.len(), 12);
        assert_ne!(a, fingerprint("token-b"));
        assert_eq!(a, fingerprint("token-a"));
    }
}
