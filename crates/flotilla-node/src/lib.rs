//! The Flotilla node: the tokio runtime around the sans-IO core and the SQLite store.
//!
//! - [`config`]: settings from TOML and flags, validated.
//! - [`identity`]: what a node keeps about itself in its data directory.
//! - [`api`]: the HTTP/JSON client API (`docs/api.md`).
//! - [`leader`]: the leader's state: the single writer (group commit, capture, log), the
//!   durable head, the follower tracker, retention.
//! - [`follower`]: drives [`flotilla_core::FollowerSession`]: transport, apply, bootstrap.

#![forbid(unsafe_code)]

pub mod api;
mod api_error;
pub mod auth;
pub mod cluster;
pub mod collab;
pub mod config;
pub mod data_lock;
pub mod exchange;
pub mod fatal;
pub mod follower;
pub mod identity;
pub mod leader;
mod metrics;
mod node;
pub mod peer;
pub mod pipeline;
mod readers;
mod serve;
mod time;
pub mod tls;

pub use config::{ConfigError, NodeConfig};
pub use node::{Node, Role};
pub use serve::run;
