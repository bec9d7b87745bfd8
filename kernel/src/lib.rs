//! llmsim's door to the kernel, shared by capture (`llmsim-agent`) and replay
//! (`replayd`): the eBPF object built from `llmsim-ebpf` and the one loader for
//! it (`object`), the replay redirect that hooks a cgroup's sockets
//! (`redirect`), cgroup v2 handling ([`cgroup`]), tracefs for the capture's syscall
//! tracepoints (`tracefs`), and starting a command inside a cgroup ([`sys`]). It also
//! says what a build is ([`build_info`]: version, commit, target, kernel needs) for
//! both binaries' `--version`, and, with the
//! `manual` feature, writes their manual pages and shell completions
//! (`manual`). Which capture probes to attach, and where, is the agent's
//! business; it builds them on `object::Object`.
//!
//! `object`, `redirect` and `tracefs` are the default `ebpf` feature; without it
//! only [`cgroup`], [`sys`] and [`build_info`] remain, and no eBPF object is built.
#![deny(unsafe_code)]

pub mod build_info;
pub mod cgroup;
#[cfg(feature = "manual")]
pub mod manual;
#[cfg(feature = "ebpf")]
pub mod object;
#[cfg(feature = "ebpf")]
pub mod redirect;
pub mod sys;
#[cfg(feature = "ebpf")]
pub mod tracefs;
