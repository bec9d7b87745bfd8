//! replayd's library: the pieces of the replay daemon that can be built and tested in
//! process, without kernel hooks. `engine` signs and indexes a loaded snapshot and decides
//! what each request gets; `response` and `body` turn a recorded answer into bytes on the
//! wire, paced as recorded (`interned` keeps its header fields for the process's life,
//! `h2_writes` sends an h2 connection's ready answers together); `error` classifies
//! failures and maps them to provider-shaped responses; `service` is the hyper service,
//! `accept` the TLS-sniffing listener and `workers` the per-core threads serving its
//! connections; `report` keeps the run's statistics; `run` ties a run together for every
//! mode; `ca` owns the per-machine replay CA and mints TLS leaves per SNI; `dns` answers
//! the target's DNS queries for recorded and known provider hosts; `explain` tells what
//! replay would do with one request; `io_error` decides which socket errors the server
//! loops ride out; `redirect` attaches the kernel redirect and runs a command under it;
//! `upstream` forwards misses to the real host (`--on-miss passthrough|record`,
//! `--budget`); `request` is a request as the app sent it; `peer` finds the process behind
//! a client connection; `faults` injects the failures of `[faults]` and `--fault`,
//! `rate_limit` simulates the providers' rate limits, `latency` synthesises the provider's
//! latency shape for `--pace model`, `metrics` keeps Prometheus metrics, and `drive` drives
//! the app run under replay with the load driver (`--drive URL`). As in pingora, downstream
//! is the app and upstream the real provider. The binary adds the command line.
#![forbid(unsafe_code)]

pub mod accept;
pub mod body;
pub mod ca;
pub mod deadline;
pub mod dns;
pub mod drive;
pub mod engine;
pub mod error;
pub mod explain;
pub mod faults;
pub mod h2_writes;
pub mod head_timeout;
mod interned;
pub mod io_error;
pub mod latency;
pub mod metrics;
pub mod options;
pub mod peer;
pub mod rate_limit;
pub mod redirect;
pub mod report;
pub mod request;
pub mod response;
pub mod run;
pub mod service;
pub mod upstream;
pub mod workers;

#[cfg(test)]
mod testutil;
