//! WXBizMsgCrypt, the scheme of every WeChat push (platforms.md §5): a SHA-1 signature
//! over the sorted `[token, timestamp, nonce, Encrypt]`, then AES-256-CBC with IV = the
//! first 16 bytes of the key and PKCS#7 padding to a 32-byte block, around
//! `16 random bytes ‖ u32 BE len ‖ msg ‖ receiveid`.
//!
//! Everything that arrives is hostile until the signature matches, and still checked
//! after: every length is tested before it is used. No error carries the token, the key
//! or the ciphertext.

use std::fmt;

use aes::Aes256;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, generic_array::GenericArray};
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use sha1::{Digest, Sha1};

use super::Hidden;

/// Standard base64, decoding like the SDKs (Python's `b64decode`, Java's commons-codec):
/// the unused low bits of the last character may be set. A 43-character EncodingAESKey
/// leaves 2 such bits, and WeChat's own sample key (`…B2C`) sets them.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// PKCS#7 block of WXBizMsgCrypt: 32, not AES's 16.
const PAD_BLOCK: usize = 32;
/// The random prefix of the plaintext.
const RANDOM_LEN: usize = 16;
/// The random prefix plus the u32 length.
const HEADER_LEN: usize = RANDOM_LEN + 4;

/// Why a push or an echostr was refused. The messages name the check, never the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// `msg_signature` does not match: wrong Token, or not from WeChat.
    BadSignature,
    /// The ciphertext is not standard base64.
    BadBase64,
    /// The ciphertext or the plaintext inside has an impossible length.
    BadLength,
    /// The PKCS#7 padding is wrong: a wrong EncodingAESKey, or a forged body.
    BadPadding,
    /// The EncodingAESKey is not 43 base64 characters.
    BadKey,
    /// The Token is empty, too long, or has a character outside printable ASCII.
    BadToken,
    /// The receiveid at the end of the plaintext is not UTF-8.
    BadReceiveId,
    /// The receiveid is not one this receiver accepts (`check_receiver`).
    WrongReceiver { got: String },
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoError::BadSignature => f.write_str(
                "msg_signature does not match (wrong message Token, or not sent by WeChat)",
            ),
            CryptoError::BadBase64 => f.write_str("the encrypted message is not valid base64"),
            CryptoError::BadLength => f.write_str("the encrypted message has an impossible length"),
            CryptoError::BadPadding => f.write_str(
                "the decrypted message has bad padding (wrong EncodingAESKey, or a forged message)",
            ),
            CryptoError::BadKey => f.write_str(
                "the EncodingAESKey must be 43 characters of base64 (A-Z, a-z, 0-9, +, /)",
            ),
            CryptoError::BadToken => f.write_str(
                "the message Token must be 1 to 128 printable ASCII characters, with no spaces",
            ),
            CryptoError::BadReceiveId => f.write_str("the decrypted receiveid is not UTF-8"),
            CryptoError::WrongReceiver { got } => write!(
                f,
                "the message is addressed to {:?}, not to this receiver",
                short(got)
            ),
        }
    }
}

impl std::error::Error for CryptoError {}

/// At most 64 characters of an id for a message: the id came from a decrypted push and
/// should be an appid or a corpid, but nothing made it short.
fn short(id: &str) -> String {
    id.chars().take(64).collect()
}

/// The message Token and the AES key of one receiver (an Open Platform component or a
/// WeCom suite). `Debug` shows neither.
#[derive(Clone)]
pub struct MsgCrypto {
    token: Hidden,
    key: [u8; 32],
}

impl fmt::Debug for MsgCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MsgCrypto { token: ***, key: *** }")
    }
}

impl MsgCrypto {
    /// From the message Token and the 43-character EncodingAESKey as the console shows them.
    /// WeChat's Token is 3–32 letters and digits; any 1–128 printable ASCII characters
    /// without spaces are accepted, since the signature works the same on them.
    pub fn from_parts(token: &str, encoding_aes_key: &str) -> Result<Self, CryptoError> {
        if token.is_empty() || token.len() > 128 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CryptoError::BadToken);
        }
        let valid = encoding_aes_key.len() == 43
            && encoding_aes_key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
        if !valid {
            return Err(CryptoError::BadKey);
        }
        let decoded = B64
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| CryptoError::BadKey)?;
        let key: [u8; 32] = decoded.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(MsgCrypto {
            token: Hidden::new(token.to_string()),
            key,
        })
    }

    /// Checks `msg_signature` against this Token, in constant time. `encrypt` is the
    /// `Encrypt` element of a POST, or the `echostr` of a WeCom URL verification.
    pub fn verify(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
    ) -> Result<(), CryptoError> {
        let expected = signature(self.token.expose(), timestamp, nonce, encrypt);
        if ct_eq(expected.as_bytes(), msg_signature.as_bytes()) {
            Ok(())
        } else {
            Err(CryptoError::BadSignature)
        }
    }

    /// `verify`, then `decrypt`: what a receiver does with each push.
    pub fn open(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
    ) -> Result<(Vec<u8>, String), CryptoError> {
        self.verify(msg_signature, timestamp, nonce, encrypt)?;
        self.decrypt(encrypt)
    }

    /// Opens a base64 ciphertext: gives the message and the receiveid found after it (an
    /// appid, a suite_id or a corpid; see `check_receiver`). Does not check the signature.
    pub fn decrypt(&self, encrypt_b64: &str) -> Result<(Vec<u8>, String), CryptoError> {
        let mut buf = B64
            .decode(encrypt_b64.as_bytes())
            .map_err(|_| CryptoError::BadBase64)?;
        // One padded header at least: 16 random bytes, the length, and 1..=32 bytes of pad
        // never fit in fewer than 32 bytes.
        if buf.len() < PAD_BLOCK || buf.len() % 16 != 0 {
            return Err(CryptoError::BadLength);
        }
        let mut dec = cbc::Decryptor::<Aes256>::new_from_slices(&self.key, self.iv())
            .map_err(|_| CryptoError::BadKey)?;
        for block in buf.chunks_exact_mut(16) {
            dec.decrypt_block_mut(GenericArray::from_mut_slice(block));
        }
        let unpadded = strip_padding(&buf)?;
        let body = unpadded.get(HEADER_LEN..).ok_or(CryptoError::BadLength)?;
        let len_bytes: [u8; 4] = unpadded
            .get(RANDOM_LEN..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(CryptoError::BadLength)?;
        let msg_len =
            usize::try_from(u32::from_be_bytes(len_bytes)).map_err(|_| CryptoError::BadLength)?;
        let msg = body.get(..msg_len).ok_or(CryptoError::BadLength)?;
        let id = body.get(msg_len..).ok_or(CryptoError::BadLength)?;
        let id = std::str::from_utf8(id).map_err(|_| CryptoError::BadReceiveId)?;
        Ok((msg.to_vec(), id.to_string()))
    }

    /// Encrypts `msg` for `receiveid` with a fresh random prefix, as WeChat does: the
    /// base64 `Encrypt` of a push or a reply. Only a message of 4 GiB or more is refused.
    // For tests, and for an encrypted reply should one ever be needed.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn encrypt(&self, msg: &[u8], receiveid: &str) -> Result<String, CryptoError> {
        let mut random = [0u8; RANDOM_LEN];
        OsRng.fill_bytes(&mut random);
        self.encrypt_with_random(msg, receiveid, random)
    }

    #[cfg_attr(not(test), allow(dead_code))]
    fn encrypt_with_random(
        &self,
        msg: &[u8],
        receiveid: &str,
        random: [u8; RANDOM_LEN],
    ) -> Result<String, CryptoError> {
        let len = u32::try_from(msg.len()).map_err(|_| CryptoError::BadLength)?;
        let mut buf = Vec::with_capacity(HEADER_LEN + msg.len() + receiveid.len() + PAD_BLOCK);
        buf.extend_from_slice(&random);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(msg);
        buf.extend_from_slice(receiveid.as_bytes());
        let pad = PAD_BLOCK - buf.len() % PAD_BLOCK;
        // 1..=32, so it fits a byte.
        buf.resize(buf.len() + pad, pad as u8);
        let mut enc = cbc::Encryptor::<Aes256>::new_from_slices(&self.key, self.iv())
            .map_err(|_| CryptoError::BadKey)?;
        for block in buf.chunks_exact_mut(16) {
            enc.encrypt_block_mut(GenericArray::from_mut_slice(block));
        }
        Ok(B64.encode(&buf))
    }

    fn iv(&self) -> &[u8] {
        &self.key[..16]
    }
}

/// `msg_signature` as WeChat computes it: SHA-1 (lowercase hex) of the four strings sorted
/// bytewise and joined with nothing between them.
pub fn signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    let mut parts = [token, timestamp, nonce, encrypt];
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a decrypted receiveid is one this receiver accepts: the component appid on
/// Open Platform; on WeCom the suite_id or the provider corpid (both have been seen in
/// pushes, platforms.md §5).
pub fn check_receiver(got: &str, expected: &[&str]) -> Result<(), CryptoError> {
    if expected.contains(&got) {
        Ok(())
    } else {
        Err(CryptoError::WrongReceiver { got: short(got) })
    }
}

/// Equality whose time depends on the lengths only, not on where the bytes differ: a
/// signature compared with `==` tells a forger, byte by byte, how much was right.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The message without its PKCS#7 padding (32-byte block): 1..=32 bytes, each holding
/// the count.
fn strip_padding(buf: &[u8]) -> Result<&[u8], CryptoError> {
    let &last = buf.last().ok_or(CryptoError::BadPadding)?;
    let pad = usize::from(last);
    if pad == 0 || pad > PAD_BLOCK || pad > buf.len() {
        return Err(CryptoError::BadPadding);
    }
    let (kept, padding) = buf.split_at(buf.len() - pad);
    if padding.iter().any(|&b| b != last) {
        return Err(CryptoError::BadPadding);
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    // WeChat's published sample Token and EncodingAESKey (WXBizMsgCrypt demos): not a
    // secret of anyone's.
    const TOKEN: &str = "QDG6eK";
    const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

    fn crypto() -> MsgCrypto {
        MsgCrypto::from_parts(TOKEN, KEY).unwrap()
    }

    // Produced by wechatpy 1.8.18 (tests/sdk/wechatpy_crypto.py):
    //   printf '%s' "$OP_PLAIN" | PUSH_TOKEN=QDG6eK \
    //     PUSH_AES_KEY=jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C PUSH_RANDOM=aaaabbbbccccdddd \
    //     python tests/sdk/wechatpy_crypto.py encrypt op wx0123456789abcdef 1413192605 1234567890
    const OP_PLAIN: &str = "<xml><AppId><![CDATA[wx0123456789abcdef]]></AppId><CreateTime>1413192605</CreateTime><InfoType><![CDATA[component_verify_ticket]]></InfoType><ComponentVerifyTicket><![CDATA[ticket@@@example]]></ComponentVerifyTicket></xml>";
    const OP_SIG: &str = "046ad9462f1fba4e22d3cbd02256c5e5b0b066e4";
    const OP_ENC: &str = "ZA4HuQypHxnRrA+A6SOHGKYbqzYHXRPZ8XM0n2i7ClKPSty4Zbqp+zmfakLo3ojWJtoHxBXYDQx3Axkbein5KyO7N16Km9LUxLxNEM+KXYjlx9gsWxHLn7CXDANjcUDaSu0H94Q/vok/7hLC/Yd+j99qPV7BMwxO6YT0B+eSj+88j6If/oecCzs2YbE53dNEwvGWcVyX+14G/rLdYHSACuDfB2GJw20F5kFeYNoywEMZr+lkp/r14/6x2x4t9EbtqBVqNOqLctqTv2pAzyG1PNew7CT55Z2mUwGPce7SOBldC+dGuD/nNXABcx6BvRGvLIiASsqrH/qdWe0ihO1J1Fo6HI2nZ2PIzDlnD6duxQRuaW/1wfKjGdktEf2kaNi2";

    // The same, for a WeCom URL verification (the echostr):
    //   printf 'echo-plaintext-123' | PUSH_TOKEN=... PUSH_AES_KEY=... PUSH_RANDOM=aaaabbbbccccdddd \
    //     python tests/sdk/wechatpy_crypto.py encrypt wecom wwcorp00000000001 1409659589 263014780
    const ECHO_SIG: &str = "c6b13f2af1de92444a55225103cd7dd567da5d67";
    const ECHO: &str =
        "ZA4HuQypHxnRrA+A6SOHGEfDmmFAitBBMvTWEmzyLikB/d05J/3xpJDankJV41+QYUnzxXX088SrjBKRD/Uguw==";

    #[test]
    fn wechatpy_known_answer_open_platform() {
        let c = crypto();
        assert_eq!(signature(TOKEN, "1413192605", "1234567890", OP_ENC), OP_SIG);
        let (msg, id) = c.open(OP_SIG, "1413192605", "1234567890", OP_ENC).unwrap();
        assert_eq!(msg, OP_PLAIN.as_bytes());
        assert_eq!(id, "wx0123456789abcdef");
        // With wechatpy's random prefix, our encryption is byte for byte its own.
        let ours = c
            .encrypt_with_random(
                OP_PLAIN.as_bytes(),
                "wx0123456789abcdef",
                *b"aaaabbbbccccdddd",
            )
            .unwrap();
        assert_eq!(ours, OP_ENC);
    }

    #[test]
    fn wechatpy_known_answer_wecom_echostr() {
        let c = crypto();
        let (msg, id) = c.open(ECHO_SIG, "1409659589", "263014780", ECHO).unwrap();
        assert_eq!(msg, b"echo-plaintext-123");
        assert_eq!(id, "wwcorp00000000001");
        check_receiver(&id, &["dk-suite", "wwcorp00000000001"]).unwrap();
    }

    #[test]
    fn round_trip_with_random_prefix() {
        let c = crypto();
        for len in [0, 1, 11, 12, 13, 43, 44, 45, 300] {
            let msg = vec![b'x'; len];
            let a = c.encrypt(&msg, "suite").unwrap();
            let b = c.encrypt(&msg, "suite").unwrap();
            assert_ne!(a, b, "the random prefix changes every ciphertext");
            assert_eq!(c.decrypt(&a).unwrap(), (msg, "suite".to_string()));
        }
        let (msg, id) = c.decrypt(&c.encrypt(b"m", "").unwrap()).unwrap();
        assert_eq!((msg.as_slice(), id.as_str()), (&b"m"[..], ""));
    }

    #[test]
    fn keys_and_tokens_are_checked() {
        assert_eq!(
            MsgCrypto::from_parts(TOKEN, &KEY[..42]).unwrap_err(),
            CryptoError::BadKey
        );
        assert_eq!(
            MsgCrypto::from_parts(TOKEN, &format!("{KEY}=")).unwrap_err(),
            CryptoError::BadKey
        );
        let bad_char = format!("{}-", &KEY[..42]);
        assert_eq!(
            MsgCrypto::from_parts(TOKEN, &bad_char).unwrap_err(),
            CryptoError::BadKey
        );
        for token in ["", "has space", "tab\t", "caf\u{e9}", &"a".repeat(129)] {
            assert_eq!(
                MsgCrypto::from_parts(token, KEY).unwrap_err(),
                CryptoError::BadToken
            );
        }
        assert!(MsgCrypto::from_parts(&"a".repeat(128), KEY).is_ok());
        assert!(MsgCrypto::from_parts("tok!_-.", KEY).is_ok());
    }

    #[test]
    fn debug_and_errors_show_no_secret() {
        let shown = format!("{:?}", crypto());
        assert!(!shown.contains(TOKEN) && !shown.contains("jWmY"), "{shown}");
        let c = crypto();
        for err in [
            c.verify("0000", "1", "2", OP_ENC).unwrap_err(),
            c.decrypt("!!!!").unwrap_err(),
            MsgCrypto::from_parts(TOKEN, "short").unwrap_err(),
        ] {
            let text = format!("{err} {err:?}");
            assert!(!text.contains(TOKEN) && !text.contains("ZA4H"), "{text}");
        }
    }

    #[test]
    fn wrong_signature_is_refused() {
        let c = crypto();
        let mut sig = OP_SIG.to_string();
        sig.replace_range(39.., "5");
        for s in [sig.as_str(), "", &OP_SIG[..39], &OP_SIG.to_uppercase()] {
            assert_eq!(
                c.verify(s, "1413192605", "1234567890", OP_ENC).unwrap_err(),
                CryptoError::BadSignature
            );
        }
        // Another timestamp: the signature covers it.
        assert_eq!(
            c.open(OP_SIG, "1413192606", "1234567890", OP_ENC)
                .unwrap_err(),
            CryptoError::BadSignature
        );
        let other = MsgCrypto::from_parts("other", KEY).unwrap();
        assert_eq!(
            other
                .verify(OP_SIG, "1413192605", "1234567890", OP_ENC)
                .unwrap_err(),
            CryptoError::BadSignature
        );
    }

    #[test]
    fn hostile_ciphertexts_are_errors_not_panics() {
        let c = crypto();
        assert_eq!(
            c.decrypt("not base64!").unwrap_err(),
            CryptoError::BadBase64
        );
        assert_eq!(c.decrypt("").unwrap_err(), CryptoError::BadLength);
        // 16 bytes (a multiple of 16, under 32), then 33 bytes.
        assert_eq!(
            c.decrypt(&B64.encode([0u8; 16])).unwrap_err(),
            CryptoError::BadLength
        );
        assert_eq!(
            c.decrypt(&B64.encode([0u8; 33])).unwrap_err(),
            CryptoError::BadLength
        );
        // A wrong key gives garbage padding (or, rarely, a plausible pad and then a length
        // that does not fit): an error either way.
        let other =
            MsgCrypto::from_parts(TOKEN, "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
        assert!(other.decrypt(OP_ENC).is_err());
    }

    /// Encrypts chosen plaintext blocks with the raw cipher, to build hostile plaintexts.
    fn raw_encrypt(c: &MsgCrypto, mut plain: Vec<u8>) -> String {
        assert_eq!(plain.len() % 16, 0);
        let mut enc = cbc::Encryptor::<Aes256>::new_from_slices(&c.key, c.iv()).unwrap();
        for block in plain.chunks_exact_mut(16) {
            enc.encrypt_block_mut(GenericArray::from_mut_slice(block));
        }
        B64.encode(&plain)
    }

    #[test]
    fn bad_padding_is_refused() {
        let c = crypto();
        let mut plain = vec![0u8; 64];
        for (pad, want) in [
            (0u8, Err(CryptoError::BadPadding)),
            (33, Err(CryptoError::BadPadding)),
            (255, Err(CryptoError::BadPadding)),
        ] {
            *plain.last_mut().unwrap() = pad;
            assert_eq!(
                c.decrypt(&raw_encrypt(&c, plain.clone())).map(|_| ()),
                want,
                "pad {pad}"
            );
        }
        // Pad 4 claimed, but one of the four bytes differs.
        let mut plain = vec![0u8; 64];
        plain[60..].copy_from_slice(&[4, 3, 4, 4]);
        assert_eq!(
            c.decrypt(&raw_encrypt(&c, plain)).unwrap_err(),
            CryptoError::BadPadding
        );
        // A whole block of pad (32) is valid, and leaves 32 bytes: header + 12.
        let mut plain = vec![0u8; 64];
        plain[16..20].copy_from_slice(&0u32.to_be_bytes());
        plain[20..32].copy_from_slice(b"receiver-id!");
        plain[32..].fill(32);
        assert_eq!(
            c.decrypt(&raw_encrypt(&c, plain)).unwrap(),
            (Vec::new(), "receiver-id!".to_string())
        );
    }

    #[test]
    fn lengths_inside_the_plaintext_are_checked() {
        let c = crypto();
        // The message length says more than the plaintext holds.
        let mut plain = vec![0u8; 32];
        plain[16..20].copy_from_slice(&13u32.to_be_bytes());
        plain[20..].fill(12);
        // 32 - 12 = 20: the header and nothing after it.
        assert_eq!(
            c.decrypt(&raw_encrypt(&c, plain)).unwrap_err(),
            CryptoError::BadLength
        );
        let mut plain = vec![0u8; 32];
        plain[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        plain[20..].fill(12);
        assert_eq!(
            c.decrypt(&raw_encrypt(&c, plain)).unwrap_err(),
            CryptoError::BadLength
        );
        // The padding eats into the header.
        let plain = vec![16u8; 32];
        assert_eq!(
            c.decrypt(&raw_encrypt(&c, plain)).unwrap_err(),
            CryptoError::BadLength
        );
        // A receiveid that is not UTF-8.
        let mut plain = vec![0u8; 32];
        plain[16..20].copy_from_slice(&0u32.to_be_bytes());
        plain[20] = 0xff;
        plain[21..].fill(11);
        assert_eq!(
            c.decrypt(&raw_encrypt(&c, plain)).unwrap_err(),
            CryptoError::BadReceiveId
        );
    }

    #[test]
    fn receiver_is_checked_by_the_caller() {
        let c = crypto();
        let (_, id) = c.decrypt(OP_ENC).unwrap();
        let err = check_receiver(&id, &["wxother"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the message is addressed to \"wx0123456789abcdef\", not to this receiver"
        );
        assert!(check_receiver(&id, &[]).is_err());
        assert!(check_receiver(&id, &["wx0123456789abcdef"]).is_ok());
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
