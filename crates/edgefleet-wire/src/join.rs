//! The join string: everything a new node needs to enroll, in one copy-pasteable line.
//!
//! Format: `EFJ1.` followed by unpadded base64url of a JSON object
//! `{"url": ..., "secret": ..., "ca_sha256": ...}`. The CA fingerprint lets the agent check
//! the server's certificate authority before it sends anything (no trust on first use).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "EFJ1.";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinString {
    /// The server's base URL, `https://host:port`.
    pub url: String,
    /// The join token secret (`<id>.<secret>`).
    pub secret: String,
    /// Lower-case hex SHA-256 of the DER encoding of the server's CA certificate.
    pub ca_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("join string must start with {PREFIX:?}")]
    Prefix,
    #[error("join string is not valid base64url: {0}")]
    Base64(String),
    #[error("join string does not hold valid JSON: {0}")]
    Json(String),
    #[error("join string field {field} is invalid: {reason}")]
    Field {
        field: &'static str,
        reason: &'static str,
    },
}

impl JoinString {
    pub fn encode(&self) -> String {
        // Serialising a struct of strings cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    pub fn decode(input: &str) -> Result<Self, JoinError> {
        let body = input.trim().strip_prefix(PREFIX).ok_or(JoinError::Prefix)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| JoinError::Base64(e.to_string()))?;
        let join: Self =
            serde_json::from_slice(&json).map_err(|e| JoinError::Json(e.to_string()))?;
        if !join.url.starts_with("https://") {
            return Err(JoinError::Field {
                field: "url",
                reason: "must start with https://",
            });
        }
        if join.secret.is_empty() {
            return Err(JoinError::Field {
                field: "secret",
                reason: "is empty",
            });
        }
        if join.ca_sha256.len() != 64 || !join.ca_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(JoinError::Field {
                field: "ca_sha256",
                reason: "must be 64 hex digits",
            });
        }
        Ok(join)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let join = JoinString {
            url: "https://127.0.0.1:7443".into(),
            secret: "abc.def".into(),
            ca_sha256: "a".repeat(64),
        };
        assert_eq!(JoinString::decode(&join.encode()), Ok(join));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(JoinString::decode("nope"), Err(JoinError::Prefix));
        assert!(matches!(
            JoinString::decode("EFJ1.!!!"),
            Err(JoinError::Base64(_))
        ));
        assert!(matches!(
            JoinString::decode("EFJ1.e30"),
            Err(JoinError::Json(_))
        ));
        let bad_url = JoinString {
            url: "http://x".into(),
            secret: "s".into(),
            ca_sha256: "a".repeat(64),
        };
        assert!(matches!(
            JoinString::decode(&bad_url.encode()),
            Err(JoinError::Field { field: "url", .. })
        ));
    }
}
