//! llmsim's offline snapshot tools: everything that reads a recorded snapshot
//! directory without touching the kernel or the network. [`report`] prices a
//! recording and renders its cost and latency (terminal table, JSON, HTML
//! page), [`verify`] is the gate a snapshot passes before it is committed,
//! and [`har`] exports it as HAR 1.2. `llmsim-agent report|verify|export` are
//! thin commands over this crate; it needs only `llmsim-snapshot`.
#![forbid(unsafe_code)]

pub mod har;
pub mod report;
pub mod verify;
