//! replayd's library: the pieces of the replay daemon that can be built and tested in
//! process, without kernel hooks. `ca` owns the per-machine replay CA and mints TLS leaf
//! certificates per SNI; `dns` answers the target's DNS queries for recorded hosts and
//! forwards or refuses the rest. The binary wires them to the cgroup redirect.
#![forbid(unsafe_code)]

pub mod ca;
pub mod dns;
