//! A JWKS document → verification keys. Each key carries the one algorithm it may verify, fixed by the key
//! (its `alg`, else its type and curve), never by the token: a token whose header names another algorithm is
//! refused, which stops the classic confusion attacks (`alg: none`, or an HS256 token "signed" with an RSA
//! public key).

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// One verification key and the algorithm it verifies.
#[derive(Clone)]
pub(crate) struct VerificationKey {
    pub key: Arc<DecodingKey>,
    pub algorithm: Algorithm,
}

/// The keys of one JWKS document, by key id. Keys without a `kid` are kept only when the document holds
/// exactly one key (a token then needs no `kid` either).
#[derive(Clone, Default)]
pub(crate) struct KeySet {
    pub by_id: HashMap<String, VerificationKey>,
    pub only: Option<VerificationKey>,
}

/// Why a JWKS document gave no usable key set.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("not a JWKS document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the JWKS holds no usable signing key ({0})")]
    NoKeys(String),
}

impl KeySet {
    /// The signing keys of `document` (RSA, P-256/P-384 and Ed25519). Keys for encryption, symmetric keys and
    /// keys of other types are skipped with a log line; a document with no usable key is an error, so that a
    /// bad refresh never replaces good keys.
    pub fn from_jwks(document: &[u8]) -> Result<Self, KeySetError> {
        let set: JwkSet = serde_json::from_slice(document)?;
        let total = set.keys.len();
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for jwk in set.keys {
            let kid = jwk.common.key_id.clone();
            let name = kid.clone().unwrap_or_else(|| "(no kid)".into());
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                skipped.push(format!("{name}: an encryption key"));
                continue;
            }
            let algorithm = match key_algorithm(&jwk) {
                Ok(algorithm) => algorithm,
                Err(reason) => {
                    skipped.push(format!("{name}: {reason}"));
                    continue;
                }
            };
            match DecodingKey::from_jwk(&jwk) {
                Ok(key) => keys.push((kid, VerificationKey { key: Arc::new(key), algorithm })),
                Err(error) => skipped.push(format!("{name}: {error}")),
            }
        }
        for reason in &skipped {
            tracing::warn!(%reason, "JWKS key skipped");
        }
        if keys.is_empty() {
            return Err(KeySetError::NoKeys(if total == 0 { "it is empty".into() } else { skipped.join("; ") }));
        }
        let only = (keys.len() == 1).then(|| keys[0].1.clone());
        let by_id = keys.into_iter().filter_map(|(kid, key)| Some((kid?, key))).collect();
        Ok(Self { by_id, only })
    }

    /// A set holding one shared HS256 secret.
    pub fn hs256(secret: &[u8]) -> Self {
        let key = VerificationKey { key: Arc::new(DecodingKey::from_secret(secret)), algorithm: Algorithm::HS256 };
        Self { by_id: HashMap::new(), only: Some(key) }
    }

    /// The key a token's `kid` names; without a `kid`, the set's only key.
    pub fn find(&self, kid: Option<&str>) -> Option<&VerificationKey> {
        match kid {
            Some(kid) => self.by_id.get(kid).or(self.only.as_ref().filter(|_| self.by_id.is_empty())),
            None => self.only.as_ref(),
        }
    }
}

/// The algorithm a JWK verifies: its `alg` when it states one that fits its type, else the usual one for
/// its type and curve.
fn key_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Algorithm, String> {
    let stated = match jwk.common.key_algorithm {
        Some(alg) => {
            Some(alg.to_string().parse::<Algorithm>().map_err(|_| format!("{alg} is not a signature algorithm"))?)
        }
        None => None,
    };
    let fits = |alg: Algorithm| -> Result<Algorithm, String> {
        match stated {
            Some(stated) if stated != alg && !same_family(stated, alg) => {
                Err(format!("its alg {stated:?} does not fit its key type"))
            }
            Some(stated) => Ok(stated),
            None => Ok(alg),
        }
    };
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => fits(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => fits(Algorithm::ES256).and_then(exact(Algorithm::ES256)),
            EllipticCurve::P384 => fits(Algorithm::ES384).and_then(exact(Algorithm::ES384)),
            ref other => Err(format!("curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => fits(Algorithm::EdDSA),
        AlgorithmParameters::OctetKeyPair(okp) => Err(format!("curve {:?} is not supported", okp.curve)),
        AlgorithmParameters::OctetKey(_) => Err("symmetric keys are not accepted from a JWKS".into()),
        _ => Err("unknown key type".into()),
    }
}

/// An EC key verifies the one algorithm of its curve.
fn exact(expected: Algorithm) -> impl Fn(Algorithm) -> Result<Algorithm, String> {
    move |alg| if alg == expected { Ok(alg) } else { Err(format!("its alg {alg:?} does not fit its curve")) }
}

/// RSA keys may state RS256/384/512 or PS256/384/512.
fn same_family(a: Algorithm, b: Algorithm) -> bool {
    a.family() == b.family()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC_KEY: &str = r#"{"kty":"EC","crv":"P-256","kid":"ec","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn keys_get_the_algorithm_of_their_type() -> Result<(), KeySetError> {
        let set = KeySet::from_jwks(format!(r#"{{"keys":[{EC_KEY}]}}"#).as_bytes())?;
        let key = set.find(Some("ec")).map(|k| k.algorithm);
        assert_eq!(key, Some(Algorithm::ES256));
        assert!(set.find(Some("other")).is_none(), "a kid the set does not hold finds nothing");
        assert_eq!(
            set.find(None).map(|k| k.algorithm),
            Some(Algorithm::ES256),
            "the only key serves tokens without kid"
        );
        Ok(())
    }

    #[test]
    fn unusable_documents_are_errors() {
        for document in [
            r#"{"keys":[]}"#,
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#,
            r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"ec","alg":"HS256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#,
            "not json",
        ] {
            assert!(KeySet::from_jwks(document.as_bytes()).is_err(), "{document}");
        }
    }
}
