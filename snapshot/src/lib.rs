//! llmsim's snapshot library: the exchange model, the on-disk format, redaction,
//! request signatures and provider knowledge (endpoints, token usage, prices and
//! the cost ledger). Both binaries use it: the agent redacts and writes
//! snapshots, replayd loads and matches them.
#![forbid(unsafe_code)]

pub mod atomic;
pub mod config;
pub mod ledger;
pub mod model;
pub mod prices;
pub mod provider;
pub mod redact;
pub mod signature;
pub mod store;
pub mod usage;
