//! The current verification keys, swapped whole when a JWKS is read again: periodically, and when a token
//! names a key id the set does not hold (a provider has rotated its keys). Fetches caused by unknown key ids
//! are at most one per cooldown, however many made-up ids arrive; a failed fetch keeps the keys there are.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::auth::config::KeySource;
use crate::auth::fetch::{self, FetchError};
use crate::auth::keys::{KeySet, KeySetError, VerificationKey};

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{source_name}: {error}")]
    Keys { source_name: String, error: KeySetError },
    #[error("the HS256 secret in {0} is shorter than 32 bytes (RFC 7518 §3.2: at least the hash size)")]
    ShortSecret(String),
}

pub(crate) struct KeyStore {
    source: KeySource,
    keys: ArcSwap<KeySet>,
    /// Held while fetching, so concurrent misses share one fetch; holds when the last miss-driven fetch ran.
    last_miss_fetch: Mutex<Option<Instant>>,
    cooldown: Duration,
}

impl KeyStore {
    /// Loads the keys once (failing start-up when they cannot be read), then, for a JWKS, re-reads them every
    /// `refresh` until the store is dropped.
    pub async fn start(source: KeySource, refresh: Duration, cooldown: Duration) -> Result<Arc<Self>, LoadError> {
        let keys = load(&source).await?;
        let store =
            Arc::new(Self { source, keys: ArcSwap::from_pointee(keys), last_miss_fetch: Mutex::new(None), cooldown });
        if !matches!(store.source, KeySource::Hs256SecretFile(_)) {
            tokio::spawn(refresh_periodically(Arc::downgrade(&store), refresh));
        }
        Ok(store)
    }

    /// The key for a token's `kid`. A `kid` the set does not hold makes a JWKS be read again first, unless
    /// one such read happened within the cooldown.
    pub async fn find(&self, kid: Option<&str>) -> Option<VerificationKey> {
        if let Some(key) = self.keys.load().find(kid) {
            return Some(key.clone());
        }
        let kid = kid?;
        if matches!(self.source, KeySource::Hs256SecretFile(_)) {
            return None;
        }
        let mut last = self.last_miss_fetch.lock().await;
        // Another miss may have fetched while this one waited for the lock.
        if let Some(key) = self.keys.load().find(Some(kid)) {
            return Some(key.clone());
        }
        if last.is_some_and(|at| at.elapsed() < self.cooldown) {
            return None;
        }
        *last = Some(Instant::now());
        tracing::info!(kid, "token names an unknown key id; reading the JWKS again");
        self.reload().await;
        self.keys.load().find(Some(kid)).cloned()
    }

    async fn reload(&self) {
        match load(&self.source).await {
            Ok(keys) => self.keys.store(Arc::new(keys)),
            Err(error) => tracing::warn!(%error, "cannot read the JWKS; keeping the current keys"),
        }
    }
}

async fn refresh_periodically(store: Weak<KeyStore>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else { return };
        store.reload().await;
    }
}

async fn load(source: &KeySource) -> Result<KeySet, LoadError> {
    let (name, document) = match source {
        KeySource::JwksFile(path) => (path.display().to_string(), fetch::read_file(path).await?),
        KeySource::JwksUrl(url) => (url.clone(), fetch::get(url).await?),
        KeySource::Hs256SecretFile(path) => {
            let secret = fetch::read_file(path).await?;
            let secret = secret.strip_suffix(b"\n").unwrap_or(&secret);
            let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
            if secret.len() < 32 {
                return Err(LoadError::ShortSecret(path.display().to_string()));
            }
            return Ok(KeySet::hs256(secret));
        }
    };
    KeySet::from_jwks(&document).map_err(|error| LoadError::Keys { source_name: name, error })
}
