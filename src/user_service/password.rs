//! Password hashing with argon2id, off the async runtime and with bounded concurrency.
//!
//! Each hash costs `m_cost` KiB of memory and tens of milliseconds of CPU by design; the semaphore keeps a burst
//! of creates (or a batch of 1000) from allocating that memory hundreds of times over at once.

use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, Version};
use tokio::sync::Semaphore;

/// Argon2id cost parameters (RFC 9106 / OWASP: m = 19 MiB, t = 2, p = 1 by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        Self { memory_kib: Params::DEFAULT_M_COST, iterations: Params::DEFAULT_T_COST }
    }
}

/// Why a password could not be hashed; never carries the password.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("argon2 hashing failed: {0}")]
    Hash(String),
    #[error("hashing task was cancelled")]
    Cancelled,
}

/// Hashes passwords into PHC strings (`$argon2id$v=19$m=…`).
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
}

impl PasswordHasher {
    /// Fails when the cost is outside argon2's limits (memory below 8 KiB per lane, zero iterations).
    pub fn new(cost: HashCost) -> Result<Self, HashError> {
        let params =
            Params::new(cost.memory_kib, cost.iterations, 1, None).map_err(|e| HashError::Params(e.to_string()))?;
        let parallel = std::thread::available_parallelism().map_or(2, usize::from);
        Ok(Self { params, permits: Arc::new(Semaphore::new(parallel)) })
    }

    /// The PHC string of `password` with a fresh random salt.
    ///
    /// The permit moves into the blocking task and is released when the hash ends, not when this future is
    /// dropped: a client that cancels its call cannot start another hash while the first still runs, so at
    /// most `available_parallelism` hashes (and their memory) exist at once, whatever clients do.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let queued = std::time::Instant::now();
        let permit = Arc::clone(&self.permits).acquire_owned().await.map_err(|_| HashError::Cancelled)?;
        crate::telemetry::metrics::user_service().hash_queue_wait.observe(queued.elapsed().as_secs_f64());
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(password.as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| HashError::Hash(e.to_string()))
        })
        .await
        .map_err(|_| HashError::Cancelled)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHash, PasswordVerifier};

    #[tokio::test]
    async fn hashes_verify_and_never_contain_the_password() -> Result<(), Box<dyn std::error::Error>> {
        let hasher = PasswordHasher::new(HashCost { memory_kib: 64, iterations: 1 })?;
        let first = hasher.hash("correct horse".into()).await?;
        let second = hasher.hash("correct horse".into()).await?;
        assert!(first.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{first}");
        assert_ne!(first, second, "salts must differ");
        assert!(!first.contains("correct horse"));
        let parsed = PasswordHash::new(&first).map_err(|e| e.to_string())?;
        let verifier = Argon2::default();
        assert!(verifier.verify_password(b"correct horse", &parsed).is_ok());
        assert!(verifier.verify_password(b"wrong horse", &parsed).is_err());
        Ok(())
    }

    /// A cancelled call's hash keeps its permit until the hash is done: the next hash waits for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_hash_keeps_its_permit_until_it_ends() -> Result<(), Box<dyn std::error::Error>> {
        // Costly enough to still run when the caller is cancelled.
        let hasher = PasswordHasher::new(HashCost { memory_kib: 16 * 1024, iterations: 2 })?;
        let total = hasher.permits.available_permits();
        let cancelled: Vec<_> = (0..total)
            .map(|_| {
                let hasher = hasher.clone();
                tokio::spawn(async move { hasher.hash("correct horse".into()).await })
            })
            .collect();
        while hasher.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        for call in &cancelled {
            call.abort();
        }
        for call in cancelled {
            assert!(call.await.is_err_and(|e| e.is_cancelled()), "the call was cancelled mid-hash");
        }
        // The callers are gone, but their hashes still hold every permit.
        assert_eq!(hasher.permits.available_permits(), 0, "permits must outlive cancelled callers");
        // They come back once the hashes end, and hashing goes on.
        let _ = hasher.hash("after".into()).await?;
        assert_eq!(hasher.permits.available_permits(), total);
        Ok(())
    }

    #[test]
    fn refuses_impossible_costs() {
        assert!(PasswordHasher::new(HashCost { memory_kib: 1, iterations: 1 }).is_err());
        assert!(PasswordHasher::new(HashCost { memory_kib: 64, iterations: 0 }).is_err());
    }
}
