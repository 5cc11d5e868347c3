//! The text of an API token: `flt_<id>_<secret>`. The id (12 hex digits) names the token in
//! lists and revocations; the secret (32 random bytes, base64url) is shown once and stored only
//! as its SHA-256 hash. Secrets are random, so a fast hash suffices (nothing to brute-force).

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "flt_";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A token as a client presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenText {
    pub id: String,
    pub secret: String,
}

impl TokenText {
    /// A new random token.
    pub fn generate() -> TokenText {
        let id: u64 = rand::random::<u64>() & 0xffff_ffff_ffff;
        let secret: [u8; 32] = rand::random();
        TokenText {
            id: format!("{id:012x}"),
            secret: B64.encode(secret),
        }
    }

    /// Parses `flt_<id>_<secret>`; `None` for anything else.
    pub fn parse(text: &str) -> Option<TokenText> {
        let rest = text.trim().strip_prefix(PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let id_ok = id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
        let secret_ok = (20..=100).contains(&secret.len())
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        (id_ok && secret_ok).then(|| TokenText {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    pub fn hash(&self) -> Vec<u8> {
        hash_secret(&self.secret)
    }

    /// Whether this token's secret is the one `stored_hash` was made from (constant time).
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        bool::from(self.hash().as_slice().ct_eq(stored_hash))
    }
}

impl std::fmt::Display for TokenText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}_{}", self.id, self.secret)
    }
}

pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_match_only_their_hash() {
        let t = TokenText::generate();
        let text = t.to_string();
        assert!(text.starts_with("flt_") && text.len() > 50, "{text}");
        let parsed = TokenText::parse(&text).unwrap();
        assert_eq!(parsed, t);
        assert!(parsed.matches(&t.hash()));
        let other = TokenText::generate();
        assert!(!other.matches(&t.hash()));
        assert_ne!(other.id, t.id);
        for bad in [
            "",
            "flt_",
            "Bearer flt_x",
            "flt_0123456789ab",
            "flt_0123456789ab_short",
            "flt_0123456789zz_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "xyz_0123456789ab_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "flt_0123456789ab_aaaaaaaaaaaaaaaaaaaa aaaaaaaaa",
        ] {
            assert_eq!(TokenText::parse(bad), None, "{bad:?}");
        }
    }
}
