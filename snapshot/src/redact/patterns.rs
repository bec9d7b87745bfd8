//! Secret-shaped text: the provider key formats scrubbed from anywhere in a
//! message (paths, header values, bodies, SSE data), plus user patterns.

use std::borrow::Cow;

use regex::bytes::{Captures, Regex};

/// Built-in patterns, ASCII-only so a match never splits a UTF-8 character.
/// `Bearer` comes first so the hash covers the token alone, as it does for an
/// `Authorization` header.
const BUILTIN: [(&str, usize); 4] = [
    // Bearer tokens anywhere: keep the scheme, replace the token (group 1). The token is
    // RFC 6750's b64token, `=` only as trailing padding, so `tok=Bearer <key>` does not
    // take the second `Bearer` into the first token and leave its key behind.
    (r"(?i-u)\bbearer[ \t]+([A-Za-z0-9._~+/-]{8,}=*)", 1),
    // OpenAI (sk-, sk-proj-, sk-svcacct-), Anthropic (sk-ant-), OpenRouter (sk-or-).
    (r"(?-u)\bsk-[A-Za-z0-9_-]{20,}", 0),
    // xAI.
    (r"(?-u)\bxai-[A-Za-z0-9_-]{20,}", 0),
    // Google API keys: AIza plus 35 characters.
    (r"(?-u)\bAIza[0-9A-Za-z_-]{35}", 0),
];

/// One compiled pattern.
pub(super) struct Pattern {
    regex: Regex,
    /// The capture group holding the secret (0: the whole match).
    group: usize,
    /// Built-in patterns only replace matches that look random (letters and
    /// digits), so prose such as `sk-learn-compatible-estimators` survives.
    plausibility: bool,
}

impl Pattern {
    /// The built-in patterns.
    pub(super) fn builtin() -> Result<Vec<Self>, (String, regex::Error)> {
        BUILTIN
            .iter()
            .map(|&(source, group)| {
                Ok(Self {
                    regex: Regex::new(source).map_err(|e| (source.to_owned(), e))?,
                    group,
                    plausibility: true,
                })
            })
            .collect()
    }

    /// A user pattern from `[redact] patterns`: group 1 if it has one.
    pub(super) fn user(source: &str) -> Result<Self, regex::Error> {
        let regex = Regex::new(source)?;
        let group = usize::from(regex.captures_len() > 1);
        Ok(Self {
            regex,
            group,
            plausibility: false,
        })
    }
}

/// Replaces every secret in `input` with `placeholder(secret)`.
pub(super) fn scrub<'a>(
    patterns: &[Pattern],
    input: &'a [u8],
    placeholder: &dyn Fn(&[u8]) -> String,
) -> Cow<'a, [u8]> {
    let mut out = Cow::Borrowed(input);
    for pattern in patterns {
        // Owned even when every match was judged implausible and kept as is.
        let replaced = match pattern.regex.replace_all(&out, |caps: &Captures<'_>| {
            replace(pattern, caps, placeholder)
        }) {
            Cow::Owned(bytes) if bytes != *out => Some(bytes),
            _ => None,
        };
        if let Some(bytes) = replaced {
            out = Cow::Owned(bytes);
        }
    }
    out
}

fn replace(
    pattern: &Pattern,
    caps: &Captures<'_>,
    placeholder: &dyn Fn(&[u8]) -> String,
) -> Vec<u8> {
    let whole = caps.get_match();
    let secret = caps.get(pattern.group).unwrap_or(whole);
    if pattern.plausibility && !looks_random(secret.as_bytes()) {
        return whole.as_bytes().to_vec();
    }
    let haystack = whole.as_bytes();
    let (start, end) = (secret.start() - whole.start(), secret.end() - whole.start());
    let mut out = haystack[..start].to_vec();
    out.extend_from_slice(placeholder(secret.as_bytes()).as_bytes());
    out.extend_from_slice(&haystack[end..]);
    out
}

fn looks_random(secret: &[u8]) -> bool {
    secret.iter().any(u8::is_ascii_digit) && secret.iter().any(u8::is_ascii_alphabetic)
}
