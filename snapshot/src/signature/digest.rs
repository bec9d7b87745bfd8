//! [`Signature`]: the SHA-256 digest of a request's canonical form, with that form kept
//! for diagnostics. Building one applies the compiled rules to the method, host, path,
//! query parameters and headers, and has the body emitted canonically. The digest leaves
//! the host out and the signature is its digest and host, so the same request addressed to
//! another host is looked up without signing it again; the hex shown to users
//! ([`Signature::hex`]) is the SHA-256 of the whole canonical form, host included.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::canonical::{Body, CanonicalRequest, canonical_body};
use super::rules::CompiledRules;

/// A request signature: the SHA-256 of the canonical request without its host, plus that
/// canonical form. Two signatures are equal when their digests and hosts are.
#[derive(Clone, Debug)]
pub struct Signature {
    pub(super) digest: [u8; 32],
    pub(super) canonical: Arc<CanonicalRequest>,
}

impl PartialEq for Signature {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest && self.canonical.host == other.canonical.host
    }
}

impl Eq for Signature {}

impl std::hash::Hash for Signature {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.digest.hash(state);
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl Signature {
    /// The signature of a request without headers (none take part by default).
    /// `path_and_query` is the request target, e.g. `/v1/chat/completions?x=1`.
    pub fn of(
        method: &str,
        host: &str,
        path_and_query: &str,
        body: Body<'_>,
        rules: &CompiledRules,
    ) -> Self {
        Self::with_headers(
            method,
            host,
            path_and_query,
            std::iter::empty::<(&str, &[u8])>(),
            body,
            rules,
        )
    }

    /// The signature of a request whose headers are offered for
    /// [`MatchRules::include_headers`](super::MatchRules::include_headers).
    pub fn with_headers<N, V>(
        method: &str,
        host: &str,
        path_and_query: &str,
        headers: impl IntoIterator<Item = (N, V)>,
        body: Body<'_>,
        rules: &CompiledRules,
    ) -> Self
    where
        N: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        // Every request is signed: what the rules leave out is dropped before it is copied.
        let mut query: Vec<(String, String)> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .filter(|(k, _)| rules.keeps_query(k))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        query.sort();
        let mut headers: Vec<(String, String)> = if rules.include_headers.is_empty() {
            Vec::new()
        } else {
            headers
                .into_iter()
                .map(|(n, v)| (n.as_ref().to_ascii_lowercase(), v))
                .filter(|(n, _)| rules.keeps_header(n))
                .map(|(n, v)| (n, String::from_utf8_lossy(v.as_ref()).trim().to_owned()))
                .collect()
        };
        headers.sort();
        let path = if rules.wildcard_model {
            wildcard_model_path(path)
        } else {
            path.to_owned()
        };
        let canonical = CanonicalRequest {
            method: method.to_ascii_uppercase(),
            host: host.trim_end_matches('.').to_ascii_lowercase(),
            path,
            query,
            headers,
            body: canonical_body(body, rules),
        };
        Self::from_canonical(canonical)
    }

    /// The signature of an already canonical request.
    pub fn from_canonical(canonical: CanonicalRequest) -> Self {
        let digest = Sha256::digest(canonical.host_free_text().as_bytes()).into();
        Self {
            digest,
            canonical: Arc::new(canonical),
        }
    }

    /// The SHA-256 digest of the canonical request without its host: with
    /// [`Self::host`], what the signature is looked up by.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The host part of the signature (lower case, no port or trailing dot).
    pub fn host(&self) -> &str {
        &self.canonical.host
    }

    /// The signature as shown to users (`replayd explain`): the SHA-256 of the whole
    /// canonical request, host included, hex. Computed when asked, as only diagnostics
    /// show it.
    pub fn hex(&self) -> String {
        hex::encode(Sha256::digest(self.canonical.hashed_text().as_bytes()))
    }

    /// The canonical request the digest was computed from.
    pub fn canonical(&self) -> &CanonicalRequest {
        &self.canonical
    }
}

/// Replaces the model in `/…/models/{model}:{method}` and the deployment in
/// `/…/deployments/{deployment}/…` with `*`.
fn wildcard_model_path(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').collect();
    let mut out: Vec<String> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let after = i.checked_sub(1).map(|p| segments[p]);
        match after {
            Some("models") if !segment.is_empty() => match segment.split_once(':') {
                Some((_, method)) => out.push(format!("*:{method}")),
                None => out.push("*".to_owned()),
            },
            Some("deployments") if !segment.is_empty() => out.push("*".to_owned()),
            _ => out.push((*segment).to_owned()),
        }
    }
    out.join("/")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::signature::MatchRules;
    use crate::signature::test_support::{chat, rules, sig};

    #[test]
    fn headers_and_the_key_parameter_are_left_out() {
        let r = rules();
        let body = chat("hi");
        let a = Signature::with_headers(
            "POST",
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.0-flash:generateContent?key=SECRET1&alt=sse",
            [("Idempotency-Key", &b"a"[..]), ("traceparent", b"00-1")],
            Body::Json(&body),
            &r,
        );
        let b = Signature::with_headers(
            "POST",
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.0-flash:generateContent?alt=sse&key=SECRET2",
            [("Idempotency-Key", &b"b"[..])],
            Body::Json(&body),
            &r,
        );
        assert_eq!(a, b);
        assert!(!a.canonical().to_string().contains("SECRET"));

        // include_headers brings a header in; ignore_headers takes it out again.
        let with = MatchRules {
            include_headers: vec!["anthropic-*".into()],
            ignore_headers: vec!["anthropic-beta".into()],
            ..MatchRules::default()
        }
        .compile()
        .unwrap();
        let h = |version: &'static str, beta: &'static str| {
            Signature::with_headers(
                "POST",
                "api.anthropic.com",
                "/v1/messages",
                [("Anthropic-Version", version), ("anthropic-beta", beta)],
                Body::Json(&body),
                &with,
            )
        };
        assert_ne!(h("2023-06-01", "x"), h("2024-01-01", "x"));
        assert_eq!(h("2023-06-01", "x"), h("2023-06-01", "y"));
    }

    #[test]
    fn different_prompts_differ() {
        let r = rules();
        assert_ne!(sig(&chat("hello"), &r), sig(&chat("goodbye"), &r));
        let mut other_model = chat("hello");
        other_model["model"] = json!("gpt-4o");
        assert_ne!(sig(&chat("hello"), &r), sig(&other_model, &r));
        // Different paths and query parameters differ too.
        let body = chat("hello");
        let a = Signature::of("POST", "h", "/v1/a?x=1", Body::Json(&body), &r);
        let b = Signature::of("POST", "h", "/v1/a?x=2", Body::Json(&body), &r);
        let c = Signature::of("POST", "h", "/v1/b?x=1", Body::Json(&body), &r);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn wildcard_model_matches_any_model() {
        let wild = MatchRules {
            wildcard_model: true,
            ..MatchRules::default()
        }
        .compile()
        .unwrap();
        let mut other = chat("hello");
        other["model"] = json!("gpt-4o");
        assert_eq!(sig(&chat("hello"), &wild), sig(&other, &wild));
        let body = json!({"contents": []});
        let g = |model: &str| {
            Signature::of(
                "POST",
                "generativelanguage.googleapis.com",
                &format!("/v1beta/models/{model}:generateContent"),
                Body::Json(&body),
                &wild,
            )
        };
        assert_eq!(g("gemini-2.0-flash"), g("gemini-2.5-pro"));
        assert_eq!(g("x").canonical().path, "/v1beta/models/*:generateContent");
    }
}
