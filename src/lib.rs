//! Portico: a REST-to-gRPC gateway driven by `google.api.http` annotations, and the UserService it fronts.

pub mod auth;
pub mod civil_date;
pub mod config;
pub mod digits;
pub mod gateway;
pub mod grpc_timeout;
pub mod proto;
pub mod settings;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod user_service;
