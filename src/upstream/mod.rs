//! The gateway's upstream: a pool of HTTP/2 connections to the gRPC endpoints and a codec for messages known
//! only from descriptors. Balancing here is per request (power of two choices). The per-endpoint circuit
//! breaker (`breaker`) and the retry policy (`retry`) are the state machines the balancer and the retry layer
//! are built from; health checking, discovery and their wiring into the request path come next.

pub mod breaker;
pub mod codec;
pub mod pool;
pub mod retry;

pub use codec::DynamicCodec;
pub use pool::{Lease, PoolConfig, PoolError, UpstreamPool};
