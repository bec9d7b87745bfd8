//! Exchange file names: `{seq:06}-{origin}-{slug}.json`, where the origin is the provider
//! (`inbound` for a request the target served), so a plain sort lists a capture in order and
//! a name says what the request was.

use std::fmt::Display;
use std::path::Path;

/// The longest slug kept in a file name.
const MAX_SLUG: usize = 60;

/// The file name for an exchange.
pub(super) fn file_name(seq: u64, origin: impl Display, method: &str, path: &str) -> String {
    format!("{seq:06}-{origin}-{}.json", slug(method, path))
}

/// Whether `name` is an exchange file: visible and ending in `.json`
/// (temporary files start with `.`).
pub(super) fn is_exchange_file(name: &str) -> bool {
    !name.starts_with('.') && Path::new(name).extension().is_some_and(|e| e == "json")
}

/// The capture order encoded in a file name, if it is an exchange file name.
pub fn seq_of(name: &str) -> Option<u64> {
    if !is_exchange_file(name) {
        return None;
    }
    let digits = name.split('-').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `POST /v1/chat/completions?x=1` -> `post-v1-chat-completions`: lowercase
/// ASCII letters and digits, runs of anything else as one `-`, query dropped.
fn slug(method: &str, path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let mut slug = String::new();
    for c in method.chars().chain(['-']).chain(path.chars()) {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    // Only ASCII was pushed, so any byte index is a char boundary.
    slug.truncate(MAX_SLUG);
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        "request".to_owned()
    } else {
        slug.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Provider;

    #[test]
    fn names_sort_and_read_back() {
        let name = file_name(
            7,
            Provider::OpenAi,
            "POST",
            "/v1/chat/completions?stream=true",
        );
        assert_eq!(name, "000007-openai-post-v1-chat-completions.json");
        assert_eq!(seq_of(&name), Some(7));
        assert_eq!(
            file_name(3, "inbound", "POST", "/triage"),
            "000003-inbound-post-triage.json"
        );
        assert!(
            file_name(9, Provider::Generic, "GET", "/")
                < file_name(10, Provider::Anthropic, "GET", "/")
        );
    }

    #[test]
    fn slugs_are_safe_and_short() {
        assert_eq!(
            slug(
                "POST",
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key=AIza"
            ),
            "post-v1beta-models-gemini-2-0-flash-streamgeneratecontent"
        );
        assert_eq!(slug("GET", "/"), "get");
        assert_eq!(slug("", ""), "request");
        assert_eq!(slug("POST", "/../../etc/passwd\0/é"), "post-etc-passwd");
        let long = slug("POST", &"/abcdefghij".repeat(20));
        assert!(long.len() <= MAX_SLUG && !long.ends_with('-'), "{long}");
    }

    #[test]
    fn non_exchange_names_have_no_seq() {
        for name in [
            "README.md",
            "-x.json",
            "abc-openai.json",
            "000001-openai-x.json.tmp",
        ] {
            assert_eq!(seq_of(name), None, "{name}");
        }
    }
}
