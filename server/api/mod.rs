//! Front ends: wire formats in, core calls, wire formats out. Proto types stop here.

pub mod admin;
pub mod convert;
pub mod grpc;
pub mod health;
pub mod http;
pub mod restrict;
