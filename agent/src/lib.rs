//! llmsim's capture agent: loads the eBPF probes, finds TLS libraries in target
//! processes, decodes kernel events into connections and HTTP exchanges, and
//! writes redacted snapshots. The binary `llmsim-agent` is a thin CLI over it
//! and over `llmsim-inspect`, which reports on snapshots (cost and latency,
//! the verify gate, HAR export).
#![deny(unsafe_code)]

pub mod capture;
pub mod cgroup;
pub mod connections;
pub mod events;
pub mod http1;
pub mod kernel;
pub mod preflight;
pub mod procfs;
pub mod recorder;
pub mod redirect;
pub mod sys;
pub mod tls_libs;
