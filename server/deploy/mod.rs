//! Safe deployment inside the server: per-model `deployment.toml` (`config`) and the routing
//! of unversioned requests between stable and canary versions (`router`), with sticky keys and
//! a kill switch. Explicitly versioned requests bypass routing (but not the kill switch).

pub mod config;
pub mod router;

pub use config::{Deployment, StickyKey};
