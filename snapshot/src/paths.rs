//! Where llmsim keeps per-machine state that belongs to no snapshot (the
//! redaction key, replayd's CA): the data directory, `$XDG_DATA_HOME/llmsim`,
//! or `$HOME/.local/share/llmsim` when `XDG_DATA_HOME` is unset or not
//! absolute, as the XDG base directory spec says.

use std::ffi::OsString;
use std::path::PathBuf;

/// The data directory, or `None` when neither `XDG_DATA_HOME` nor `HOME` is an
/// absolute path. Each caller turns `None` into its own error, which says what
/// the directory was needed for.
pub fn data_dir() -> Option<PathBuf> {
    data_dir_from(|var| std::env::var_os(var))
}

/// [`data_dir`] with the environment read through `env`.
fn data_dir_from(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let absolute = |var: &str| env(var).map(PathBuf::from).filter(|p| p.is_absolute());
    absolute("XDG_DATA_HOME")
        .map(|data_home| data_home.join("llmsim"))
        .or_else(|| absolute("HOME").map(|home| home.join(".local/share/llmsim")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        |name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| OsString::from(value))
        }
    }

    #[test]
    fn xdg_data_home_first_then_home() {
        let both = [("XDG_DATA_HOME", "/data"), ("HOME", "/home/u")];
        assert_eq!(data_dir_from(env(&both)), Some("/data/llmsim".into()));
        let relative = [("XDG_DATA_HOME", "data"), ("HOME", "/home/u")];
        assert_eq!(
            data_dir_from(env(&relative)),
            Some("/home/u/.local/share/llmsim".into())
        );
        assert_eq!(data_dir_from(env(&[("HOME", "home")])), None);
        assert_eq!(data_dir_from(env(&[])), None);
    }
}
