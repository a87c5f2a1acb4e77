//! The settings of JWT authentication, the same for the gateway and the UserService.

use std::path::PathBuf;
use std::time::Duration;

/// Where the verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS document in a file, re-read periodically.
    JwksFile(PathBuf),
    /// A JWKS document at an `http://` or `https://` URL (an OIDC provider's `jwks_uri`), fetched again
    /// periodically and when a token names a key id it does not hold.
    JwksUrl(String),
    /// A shared HS256 secret read from a file (its bytes as they are, less a trailing newline).
    Hs256SecretFile(PathBuf),
}

/// How tokens are verified. Auth is on wherever one of these is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub keys: KeySource,
    /// The `iss` a token must carry; any when unset.
    pub issuer: Option<String>,
    /// The `aud` a token must carry; required with a JWKS (a provider's keys sign tokens for all its clients).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// The claim holding the caller's roles, as a dotted path (`realm_access.roles` for Keycloak).
    pub roles_claim: String,
    /// How often a JWKS is read again.
    pub jwks_refresh: Duration,
    /// After a JWKS fetch caused by an unknown `kid`, the next such fetch waits this long, so a flood of
    /// made-up key ids cannot hammer the issuer.
    pub unknown_kid_cooldown: Duration,
}

impl AuthConfig {
    pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
    pub const DEFAULT_ROLES_CLAIM: &str = "roles";
    pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
    pub const DEFAULT_UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(10);

    /// Defaults for everything but the keys.
    pub fn new(keys: KeySource) -> Self {
        Self {
            keys,
            issuer: None,
            audience: None,
            leeway: Self::DEFAULT_LEEWAY,
            roles_claim: Self::DEFAULT_ROLES_CLAIM.into(),
            jwks_refresh: Self::DEFAULT_JWKS_REFRESH,
            unknown_kid_cooldown: Self::DEFAULT_UNKNOWN_KID_COOLDOWN,
        }
    }
}
