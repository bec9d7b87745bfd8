//! llmsim's capture agent: attaches the eBPF probes (loaded through
//! `llmsim-kernel`), finds TLS libraries in target processes, decodes kernel events into connections and HTTP exchanges, and
//! writes redacted snapshots; then reports on them (cost and latency, the
//! verify gate, HAR export). The binary `llmsim-agent` is a thin CLI over it.
#![deny(unsafe_code)]

pub mod capture;
pub mod connections;
pub mod events;
pub mod har;
pub mod http1;
pub mod preflight;
pub mod probes;
pub mod recorder;
pub mod report;
pub mod sys;
pub mod tls_libs;
pub mod verify;
