//! Snapshots written as something another tool runs. `locust`: the inbound
//! requests (those the target served) as a Locust load test, which a fleet of
//! Locust workers sends to apps that each run under `replayd`. (The HAR export
//! of whole exchanges, for browser devtools, is `llmsim-inspect`'s.)

pub mod locust;
