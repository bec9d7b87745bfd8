//! llmsim's snapshot library: the exchange model, the on-disk format, redaction,
//! request signatures and provider knowledge (endpoints, token usage, prices and
//! the cost ledger). Both binaries use it: the agent redacts and writes
//! snapshots, replayd loads and matches them.
#![forbid(unsafe_code)]

pub mod atomic;
pub mod authority;
pub mod config;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod ledger;
pub mod model;
pub mod paths;
pub mod prices;
pub mod provider;
pub mod record;
pub mod redact;
pub mod signature;
pub mod store;
pub mod usage;

/// `error: cause: cause`: an error and its sources on one line, for log lines
/// and messages that cannot use anyhow's `{:#}`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
