//! The gateway's upstream: a pool of HTTP/2 connections to the gRPC endpoints and a codec for messages known
//! only from descriptors. Balancing here is per request (power of two choices); health checking, circuit
//! breaking, discovery and retries build on this module as tower layers.

pub mod codec;
pub mod pool;

pub use codec::DynamicCodec;
pub use pool::{Lease, PoolConfig, PoolError, UpstreamPool};
