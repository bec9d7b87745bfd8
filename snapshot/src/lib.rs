//! llmsim's snapshot library: the exchange model, the on-disk format, redaction,
//! request signatures and provider knowledge. Both binaries use it: the agent
//! redacts and writes snapshots, replayd loads and matches them.
#![forbid(unsafe_code)]

pub mod atomic;
pub mod config;
pub mod model;
pub mod provider;
pub mod redact;
pub mod signature;
pub mod store;
