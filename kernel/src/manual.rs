//! A binary's manual pages and shell completions, generated from its clap
//! definition (`clap_mangen`, `clap_complete`), so that they say what the
//! binary parses. Each binary writes its own through a hidden
//! `generate-manual DIR` subcommand, which `cargo xtask dist` runs to fill the
//! release tarball and the Debian package.

use std::path::{Path, PathBuf};

use clap::Command;
use clap_complete::Shell;

/// What can go wrong writing a manual.
#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    /// The output directory, or a page or completion file in it, could not be written.
    #[error("cannot write the manual pages and completions into {dir}")]
    Write {
        /// The output directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The shells completions are written for; the files are named as `clap_complete`
/// names them: `NAME.bash`, `_NAME` (zsh) and `NAME.fish`.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes into `dir` (created if missing) the manual page `NAME.1` of `command`,
/// one page `NAME-SUB.1` for each visible subcommand, recursively (as
/// `clap_mangen` names them), and its completions for [`SHELLS`].
pub fn write(mut command: Command, dir: &Path) -> Result<(), ManualError> {
    let error = |source| ManualError::Write {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(error)?;
    clap_mangen::generate_to(command.clone(), dir).map_err(error)?;
    let name = command.get_name().to_owned();
    for shell in SHELLS {
        clap_complete::generate_to(shell, &mut command, &name, dir).map_err(error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{Arg, Command};

    #[test]
    fn pages_for_the_command_and_its_visible_subcommands_and_three_completions() {
        let command = Command::new("tool")
            .version("1.0")
            .arg(
                Arg::new("verbose")
                    .long("verbose")
                    .action(clap::ArgAction::SetTrue),
            )
            .subcommand(Command::new("run").subcommand(Command::new("fast")))
            .subcommand(Command::new("secret").hide(true));
        let dir = tempfile::tempdir().expect("tempdir");
        super::write(command, dir.path()).expect("written");
        let mut written: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        written.sort();
        assert_eq!(
            written,
            [
                "_tool",
                "tool-run-fast.1",
                "tool-run.1",
                "tool.1",
                "tool.bash",
                "tool.fish"
            ]
        );
        let page = std::fs::read_to_string(dir.path().join("tool.1")).expect("page");
        assert!(page.contains("\\-\\-verbose"), "{page}");
        assert!(page.contains(".TH tool 1"), "{page}");
    }
}
