//! JWT bearer authentication, shared by both ends: the gateway checks a token's authenticity before any
//! upstream call, and the UserService checks it again (it can be reached without the gateway) and then applies
//! the access rules declared next to each RPC as `portico.auth` method options.
//!
//! The jobs, one per file: `config` (the settings), `fetch` (reading a JWKS document from a file or an
//! http(s) URL), `keys` (a JWKS document → verification keys, each with the one algorithm it may verify),
//! `key_store` (the current keys, refreshed periodically and on an unknown `kid`), `verify` (token → verified
//! [`Caller`], or a [`TokenError`] saying why not), `caller` (who is calling: subject and roles), and `policy`
//! (the `portico.auth` rules read from descriptors, and the decision for one call).

mod caller;
mod config;
mod fetch;
mod key_store;
mod keys;
pub mod policy;
mod verify;

pub use caller::Caller;
pub use config::{AuthConfig, KeySource};
pub use fetch::FetchError;
pub use keys::KeySetError;
pub use verify::{AuthSetupError, TokenError, Verifier, bearer_token};
