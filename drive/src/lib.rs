//! `llmsim-drive`: the replay and load driver for the app's own API. It reads the
//! inbound exchanges of a snapshot (the requests the app served, recorded with
//! `capture --app-port`), sends them to the running app again, and compares each answer
//! with the recorded one under the snapshot's `[compare]` rules: the regression test.
//! The same run becomes a load test with copies (`--multiply`), a fixed rate (open loop,
//! latency from each request's scheduled start) or a number of requests in flight
//! (closed loop), for a duration, with a live progress line, an end summary (text or
//! JSON) and Prometheus metrics.
//!
//! The modules: [`plan`] turns the snapshot into the requests to send and the target URL
//! into where to send them; [`compare`] finds and renders the differences between an
//! answer and the recorded one; [`client`] holds one HTTP/1.1 connection (plain or TLS);
//! [`run`] schedules the requests and tallies the outcomes into a [`summary::Summary`];
//! [`metrics`] keeps the driver's metrics and [`exposition`] serves Prometheus registries
//! (replayd's as well). [`options::DriveOptions`] are the command-line options that
//! `llmsim-agent replay` and `replayd --drive` share.
#![forbid(unsafe_code)]

pub mod client;
pub mod compare;
pub mod exposition;
pub mod metrics;
pub mod options;
pub mod plan;
pub mod run;
pub mod summary;

pub use options::DriveOptions;
pub use run::Driver;
pub use summary::Summary;

/// Exit status of a run with a difference or an error.
pub const EXIT_DIFFERENCES: u8 = 1;
/// Exit status of bad input: an unusable snapshot, target or option.
pub const EXIT_BAD_INPUT: u8 = 2;
