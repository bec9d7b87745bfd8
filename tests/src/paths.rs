//! Where the harness finds the repository's test assets (the fake provider and the client
//! programs), located from this crate's `CARGO_MANIFEST_DIR` so tests work from any directory.

use std::path::{Path, PathBuf};

/// The `tests` crate directory (compile-time `CARGO_MANIFEST_DIR`).
pub fn tests_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The repository (workspace) root.
pub fn repo_root() -> PathBuf {
    tests_dir()
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent directory", tests_dir().display()))
        .to_path_buf()
}

/// `tests/fake_provider/fake_provider.py`.
pub fn fake_provider_script() -> PathBuf {
    existing(tests_dir().join("fake_provider/fake_provider.py"))
}

/// `tests/clients`.
pub fn clients_dir() -> PathBuf {
    tests_dir().join("clients")
}

/// The path of a client program in `tests/clients`, e.g. `client_script("openai_chat.py")`;
/// panics if it does not exist.
pub fn client_script(name: &str) -> PathBuf {
    existing(clients_dir().join(name))
}

/// A program the Node clients' dependencies install (`tests/clients/node_modules/.bin/NAME`),
/// such as the `bun` and `deno` runtimes.
pub fn npm_bin(name: &str) -> PathBuf {
    clients_dir().join("node_modules/.bin").join(name)
}

/// Checks that the Node clients' dependencies (`tests/clients/node_modules`, pinned by
/// `tests/clients/package-lock.json`) are installed; panics with the command to run otherwise.
pub fn ensure_node_client() {
    let marker = clients_dir().join("node_modules/openai/package.json");
    assert!(
        marker.is_file(),
        "{} is missing: the Node test clients' dependencies are not installed. \
         Run scripts/setup.sh (it runs `npm ci --prefix tests/clients`).",
        marker.display()
    );
}

fn existing(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "test asset {} is missing from the repository",
        path.display()
    );
    path
}
