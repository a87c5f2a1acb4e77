//! Token → verified [`Caller`]. jsonwebtoken checks the signature and the registered claims; this file picks
//! the key, insists that the token's algorithm is the key's, and says precisely why a token is refused.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};

use crate::auth::caller::Caller;
use crate::auth::config::AuthConfig;
use crate::auth::key_store::{KeyStore, LoadError};

/// Why a request carries no acceptable token. The message is safe to show to the client: it never echoes
/// the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a bearer token is required")]
    Missing,
    #[error("the Authorization header does not hold a Bearer token")]
    NotBearer,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("the token names key id {0:?}, which the issuer's key set does not hold")]
    UnknownKey(String),
    #[error("the token names no key id, and there are several keys")]
    NoKeyId,
    #[error("the token's algorithm {token:?} does not fit its key, which verifies {key:?} only")]
    AlgorithmMismatch { token: Algorithm, key: Algorithm },
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token lacks the {0:?} claim")]
    MissingClaim(String),
    #[error("the token's {0:?} claim is malformed")]
    BadClaim(String),
}

impl TokenError {
    /// No credentials at all, as opposed to bad ones (RFC 6750 §3.1: then no error code is sent).
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Missing)
    }
}

/// Why authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("cannot load the JWT keys: {0}")]
    Keys(#[from] LoadError),
}

/// Verifies bearer tokens against the configured keys, issuer and audience.
pub struct Verifier {
    keys: Arc<KeyStore>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
    roles_path: Vec<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Loads the keys (a JWKS is then refreshed in the background for as long as the verifier lives).
    ///
    /// # Errors
    ///
    /// The keys cannot be read, hold no usable key, or the HS256 secret is too short.
    pub async fn start(config: &AuthConfig) -> Result<Arc<Self>, AuthSetupError> {
        let keys = KeyStore::start(config.keys.clone(), config.jwks_refresh, config.unknown_kid_cooldown).await?;
        Ok(Arc::new(Self {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_secs: config.leeway.as_secs(),
            roles_path: config.roles_claim.split('.').map(str::to_string).collect(),
        }))
    }

    /// The caller a request's `Authorization: Bearer` header proves, or why it proves nothing; what both ends
    /// (the gateway's layer and the UserService's) ask of a request.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, TokenError> {
        self.verify(bearer_token(headers.get(http::header::AUTHORIZATION))?).await
    }

    /// The caller a token proves, or why it proves nothing.
    pub async fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        // `alg: none` and unknown algorithms fail here: they are not in jsonwebtoken's Algorithm.
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(describe(e.kind())))?;
        let key = self.keys.find(header.kid.as_deref()).await.ok_or_else(|| match header.kid {
            // The kid is the client's text: echo only a bounded part of it.
            Some(kid) => TokenError::UnknownKey(kid.chars().take(64).collect()),
            None => TokenError::NoKeyId,
        })?;
        if header.alg != key.algorithm {
            return Err(TokenError::AlgorithmMismatch { token: header.alg, key: key.algorithm });
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation).map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
                ErrorKind::InvalidClaimFormat(claim) => TokenError::BadClaim(claim.clone()),
                ErrorKind::InvalidAlgorithm => TokenError::AlgorithmMismatch { token: header.alg, key: key.algorithm },
                other => TokenError::Malformed(describe(other)),
            })?;
        Ok(Caller::from_claims(&data.claims, &self.roles_path))
    }
}

/// The token of an `Authorization: Bearer <token>` header value (the scheme is case-insensitive).
///
/// # Errors
///
/// [`TokenError::Missing`] without a header, [`TokenError::NotBearer`] for another scheme or an empty token.
pub fn bearer_token(authorization: Option<&http::HeaderValue>) -> Result<&str, TokenError> {
    let value = authorization.ok_or(TokenError::Missing)?.to_str().map_err(|_| TokenError::NotBearer)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(TokenError::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(TokenError::NotBearer);
    }
    Ok(token)
}

/// A short reason for a token that could not be parsed, without echoing any of it.
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidToken => "not three base64url parts".into(),
        ErrorKind::Base64(_) => "invalid base64url".into(),
        ErrorKind::Json(_) => "invalid JSON, or an algorithm that is not accepted (such as none)".into(),
        ErrorKind::Utf8(_) => "invalid UTF-8".into(),
        ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => "unsupported algorithm".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let header = |v: &'static str| http::HeaderValue::from_static(v);
        assert_eq!(bearer_token(Some(&header("Bearer abc"))), Ok("abc"));
        assert_eq!(bearer_token(Some(&header("bearer  abc "))), Ok("abc"));
        assert_eq!(bearer_token(None), Err(TokenError::Missing));
        assert_eq!(bearer_token(Some(&header("Basic dXNlcjpwdw=="))), Err(TokenError::NotBearer));
        assert_eq!(bearer_token(Some(&header("Bearer"))), Err(TokenError::NotBearer));
        assert_eq!(bearer_token(Some(&header("Bearer "))), Err(TokenError::NotBearer));
    }
}
