//! The API key format and its keyed hash.
//!
//! A key is `mem_live_<32 base62>` or `mem_test_<32 base62>` (about 190 bits of
//! randomness). Only HMAC-SHA-256(server secret, key) and a short display
//! prefix are stored: with that much entropy a slow password hash buys nothing
//! and would cost milliseconds on every request.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const SECRET_LEN: usize = 32;
/// Characters of the secret part shown in listings (after `mem_live_`).
const DISPLAY_CHARS: usize = 4;

/// Live keys touch real, billed data; test keys touch their org's sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Live,
    Test,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<Environment> {
        match s {
            "live" => Some(Environment::Live),
            "test" => Some(Environment::Test),
            _ => None,
        }
    }
}

impl std::fmt::Display for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that has the shape of an API key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    text: String,
    environment: Environment,
}

// Never print a key by accident.
impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({}…)", self.display_prefix())
    }
}

impl ApiKey {
    /// Generates a new random key.
    pub fn generate(environment: Environment) -> ApiKey {
        ApiKey { text: format!("mem_{}_{}", environment.as_str(), random_base62(SECRET_LEN)), environment }
    }

    /// Parses a presented key; `None` if it does not have the key format.
    pub fn parse(s: &str) -> Option<ApiKey> {
        let (environment, rest) = if let Some(rest) = s.strip_prefix("mem_live_") {
            (Environment::Live, rest)
        } else if let Some(rest) = s.strip_prefix("mem_test_") {
            (Environment::Test, rest)
        } else {
            return None;
        };
        if rest.len() != SECRET_LEN || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        Some(ApiKey { text: s.to_string(), environment })
    }

    /// True if `s` looks like one of our keys, even a malformed one; used to
    /// refuse keys placed in URLs.
    pub fn looks_like_key(s: &str) -> bool {
        s.contains("mem_live_") || s.contains("mem_test_")
    }

    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// The full key; show it once, at creation.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// `mem_live_AbCd`: enough to recognise a key in a listing, useless to an attacker.
    pub fn display_prefix(&self) -> String {
        self.text[..9 + DISPLAY_CHARS].to_string()
    }

    /// HMAC-SHA-256 of the key under the server secret, hex encoded.
    pub fn hash(&self, secret: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
        mac.update(self.text.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Uniform base62 characters by rejection sampling random bytes.
pub fn random_base62(len: usize) -> String {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in rand::random::<[u8; 32]>() {
            // 248 = 4 * 62: values at or above it would bias the first characters.
            if b < 248 && out.len() < len {
                out.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    out
}

/// A new random hex secret for keying hashes.
pub fn random_secret_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash_stably() {
        let key = ApiKey::generate(Environment::Test);
        assert!(key.expose().starts_with("mem_test_"));
        assert_eq!(key.expose().len(), 9 + SECRET_LEN);
        let parsed = ApiKey::parse(key.expose()).expect("parses");
        assert_eq!(parsed.environment(), Environment::Test);
        assert_eq!(parsed.hash(b"s1"), key.hash(b"s1"));
        assert_ne!(parsed.hash(b"s1"), key.hash(b"s2"));
        assert_eq!(key.display_prefix().len(), 13);
        assert!(!format!("{key:?}").contains(&key.expose()[13..]));
    }

    #[test]
    fn malformed_keys_are_rejected() {
        for bad in [
            "",
            "mem_live_",
            "mem_live_short",
            "mem_prod_0123456789abcdefghijABCDEFGHIJ01",
            "mem_live_0123456789abcdefghijABCDEFGHIJ0!",
            "mem_live_0123456789abcdefghijABCDEFGHIJ012",
        ] {
            assert!(ApiKey::parse(bad).is_none(), "{bad}");
        }
        assert!(ApiKey::parse("mem_live_0123456789abcdefghijABCDEFGHIJ01").is_some());
    }

    #[test]
    fn base62_is_roughly_uniform() {
        let s = random_base62(62_000);
        let mut counts = [0usize; 128];
        for b in s.bytes() {
            counts[b as usize] += 1;
        }
        for &c in BASE62 {
            let n = counts[c as usize];
            assert!((700..1300).contains(&n), "char {} seen {n} times", c as char);
        }
    }
}
