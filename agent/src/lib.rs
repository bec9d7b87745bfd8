//! llmsim's capture agent: attaches the eBPF probes (loaded through
//! `llmsim-kernel`), finds TLS libraries in target processes, decodes kernel
//! events into connections and HTTP exchanges, and writes redacted snapshots.
//! The binary `llmsim-agent` is a thin CLI over it and over `llmsim-inspect`,
//! which reports on snapshots (cost and latency, the verify gate, HAR export);
//! `export` writes a snapshot's inbound requests as a Locust load test.
#![deny(unsafe_code)]

pub mod capture;
pub mod clienthello;
pub mod connections;
pub mod coverage;
pub mod drain_pace;
pub mod events;
pub mod export;
pub mod gotls;
pub mod http1;
pub mod http2;
pub mod placement;
pub mod plain;
pub mod preflight;
pub mod probes;
pub mod procfs;
pub mod recorder;
pub mod rustls;
pub mod sys;
pub mod tls_libs;
