//! Safe deployment inside the server: per-model `deployment.toml` (`config`) and the routing
//! of unversioned requests between stable and canary versions (`router`), with sticky keys and
//! a kill switch (`router`), and shadow versions (`shadow`). Explicitly versioned requests bypass
//! routing and shadowing (but not the kill switch).

pub mod config;
pub mod control;
pub mod gates;
pub mod psi;
pub mod router;
pub mod shadow;

pub use config::{Deployment, StickyKey};
