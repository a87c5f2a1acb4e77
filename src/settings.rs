//! What every configuration shares: the error for a setting that cannot work. The library's configs
//! (`GatewayConfig`, `UserServiceConfig`) validate themselves with it, so a config built in code is checked as
//! one built from flags is, and the flags (`config.rs`) report it by the flag's name.

/// A setting that cannot work, named with the flag that sets it.
#[derive(Debug, thiserror::Error)]
#[error("invalid --{flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
}
