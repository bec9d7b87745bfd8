//! The end-to-end test harness of llmsim: everything a test needs to drive the built `llmsim-agent`
//! and `replayd` binaries with real, unmodified clients against a local fake provider, and nothing
//! that talks to a real provider. Tests only ever reach loopback or hosts inside network namespaces
//! they create themselves ([`TestNetns`]).
//!
//! A typical privileged test:
//!
//! ```no_run
//! use llmsim_tests::{privileged, FakeProvider, TestCa, TestNetns, run_client};
//!
//! if !privileged("capture of openai-python") {
//!     return;
//! }
//! let ca = TestCa::new();
//! let netns = TestNetns::new();
//! let provider = FakeProvider::start(&netns, &ca);
//! let run = run_client(&netns, &ca, "openai_chat.py");
//! for result in &run.report.results {
//!     let text = result.text.as_deref().unwrap_or_default();
//!     assert!(provider.requests().iter().any(|r| r.nonce.as_deref().is_some_and(|n| text.contains(n))));
//! }
//! ```
//!
//! To record a client, wrap the namespaced client in the agent; the fake provider stays outside
//! the captured process tree, so only the client's TLS traffic is recorded:
//!
//! ```no_run
//! # use llmsim_tests::*;
//! # let (ca, netns) = (TestCa::new(), TestNetns::new());
//! # let _provider = FakeProvider::start(&netns, &ca);
//! let mut cmd = std::process::Command::new(llmsim_agent());
//! cmd.arg("capture").arg("--").args(netns_client_argv(&netns, "openai_chat.py"));
//! configure_client_env(&mut cmd, &ca);
//! let out = run_command(cmd, "capture of openai_chat.py", std::time::Duration::from_secs(120));
//! let run = ClientRun::finish(out);
//! ```
//!
//! Everything panics with context instead of returning `Result`, cleans up through RAII guards,
//! and synchronises on what processes print (never on fixed sleeps).
#![forbid(unsafe_code)]

pub mod bins;
pub mod ca;
pub mod cgroup;
pub mod clients;
pub mod dist;
pub mod flows;
pub mod h2;
pub mod kernels;
pub mod listen;
pub mod netns;
pub mod paced_stream;
pub mod paths;
pub mod privilege;
pub mod process;
pub mod provider;
pub mod snapshot;
pub mod tmpfs;

pub use bins::{bin_dir, binary, llmsim_agent, replayd, stripped_copy};
pub use ca::TestCa;
pub use cgroup::{TestCgroup, cgroup2_mount};
pub use clients::{
    ClientReport, ClientResult, ClientRun, TEST_API_KEYS, client_argv, client_command,
    clients_argv, configure_client_env, find_nonce, js_runtime_fetch, netns_client_argv,
    run_client, run_client_on_loopback,
};
pub use h2::{
    GRPC_SERVER_PORT, GrpcServer, H2_PORT, H2_SERVER_PORT, H2Front, H2Server, ProviderBehindH2,
    on_path,
};
pub use listen::ListeningReplayd;
pub use netns::{PROVIDER_HOSTS, TestNetns};
pub use paths::{
    client_script, clients_dir, ensure_node_client, fake_provider_script, npm_bin, repo_root,
    tests_dir,
};
pub use privilege::{is_root, privileged, requires};
pub use process::{ChildGuard, CommandOutput, Lines, run_command};
pub use provider::{FakeProvider, FakeProviderConfig, ProviderRequest, Usage};
pub use tmpfs::TestTmpfs;
