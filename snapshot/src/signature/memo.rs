//! Signatures already computed, by the exact request they were computed for. A load test
//! sends the same recorded requests over and over, and signing one means canonicalising its
//! JSON body, most of a replay server's work per request. A signature is a pure function of
//! the request's signed parts under fixed rules, so [`SignatureMemo`] keeps each one by those
//! parts (method, host, target, the headers the rules keep, body bytes) and hands it out
//! again when all of them are byte-equal: a hash probe and one comparison instead of a
//! parse. It is bounded; when full it starts over.

use std::hash::{BuildHasher, Hasher};
use std::sync::RwLock;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::canonical::Body;
use super::digest::Signature;
use super::rules::CompiledRules;

/// At most this many remembered requests...
const MAX_ENTRIES: usize = 4096;
/// ...holding at most this many bytes of request between them.
const MAX_BYTES: usize = 64 << 20;

/// The signed parts of a request, borrowed.
struct Parts<'a> {
    method: &'a str,
    host: &'a str,
    target: &'a str,
    headers: Vec<(&'a str, &'a [u8])>,
    body: &'a [u8],
}

impl Parts<'_> {
    fn hash(&self, state: &DefaultHashBuilder) -> u64 {
        let mut hasher = state.build_hasher();
        for part in [self.method, self.host, self.target] {
            hasher.write_usize(part.len());
            hasher.write(part.as_bytes());
        }
        for (name, value) in &self.headers {
            hasher.write_usize(name.len());
            hasher.write(name.as_bytes());
            hasher.write_usize(value.len());
            hasher.write(value);
        }
        hasher.write(self.body);
        hasher.finish()
    }

    fn len(&self) -> usize {
        self.method.len()
            + self.host.len()
            + self.target.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
            + self.body.len()
    }
}

/// A remembered header: name and value.
type OwnedHeader = (Box<str>, Box<[u8]>);

/// One remembered request, owned, and its signature.
struct Remembered {
    hash: u64,
    method: Box<str>,
    host: Box<str>,
    target: Box<str>,
    headers: Box<[OwnedHeader]>,
    body: Box<[u8]>,
    signature: Signature,
}

impl Remembered {
    /// Whether this is the request of `parts`, whose hash is `hash`.
    fn is(&self, hash: u64, parts: &Parts<'_>) -> bool {
        self.hash == hash
            && *self.body == *parts.body
            && *self.target == *parts.target
            && *self.host == *parts.host
            && *self.method == *parts.method
            && self.headers.len() == parts.headers.len()
            && self
                .headers
                .iter()
                .zip(&parts.headers)
                .all(|((n, v), (pn, pv))| **n == **pn && **v == **pv)
    }
}

#[derive(Default)]
struct Table {
    entries: HashTable<Remembered>,
    bytes: usize,
}

/// Signatures by the exact request they were computed for, for one set of rules.
#[derive(Default)]
pub struct SignatureMemo {
    state: DefaultHashBuilder,
    table: RwLock<Table>,
}

impl std::fmt::Debug for SignatureMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = self
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f.debug_struct("SignatureMemo")
            .field("entries", &table.entries.len())
            .field("bytes", &table.bytes)
            .finish_non_exhaustive()
    }
}

impl SignatureMemo {
    /// What [`Signature::with_headers`] returns for this request under `rules`, which must
    /// be the same rules on every call: remembered when the same request was signed before.
    pub fn sign<'a>(
        &self,
        method: &'a str,
        host: &'a str,
        target: &'a str,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        body: &'a [u8],
        rules: &CompiledRules,
    ) -> Signature {
        let parts = Parts {
            method,
            host,
            target,
            headers: if rules.include_headers.is_empty() {
                Vec::new()
            } else {
                headers
                    .into_iter()
                    .filter(|(name, _)| rules.keeps_header(&name.to_ascii_lowercase()))
                    .collect()
            },
            body,
        };
        let hash = parts.hash(&self.state);
        let table = self
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(known) = table.entries.find(hash, |r| r.is(hash, &parts)) {
            return known.signature.clone();
        }
        drop(table);
        let signature = Signature::with_headers(
            method,
            host,
            target,
            parts.headers.iter().copied(),
            Body::Bytes(body),
            rules,
        );
        self.remember(hash, &parts, &signature);
        signature
    }

    fn remember(&self, hash: u64, parts: &Parts<'_>, signature: &Signature) {
        let len = parts.len();
        if len > MAX_BYTES {
            return;
        }
        let mut table = self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if table.entries.find(hash, |r| r.is(hash, parts)).is_some() {
            return;
        }
        if table.entries.len() >= MAX_ENTRIES || table.bytes + len > MAX_BYTES {
            *table = Table::default();
        }
        table.bytes += len;
        table.entries.insert_unique(
            hash,
            Remembered {
                hash,
                method: parts.method.into(),
                host: parts.host.into(),
                target: parts.target.into(),
                headers: parts
                    .headers
                    .iter()
                    .map(|&(n, v)| (n.into(), v.into()))
                    .collect(),
                body: parts.body.into(),
                signature: signature.clone(),
            },
            |r| r.hash,
        );
    }

    /// How many requests are remembered.
    pub fn len(&self) -> usize {
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entries
            .len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::MatchRules;

    fn rules(include_headers: &[&str]) -> CompiledRules {
        MatchRules {
            include_headers: include_headers.iter().map(|h| (*h).to_owned()).collect(),
            ..MatchRules::default()
        }
        .compile()
        .unwrap()
    }

    const BODY: &[u8] =
        br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"user":"u1"}"#;

    #[test]
    fn a_remembered_signature_is_the_one_signing_gives() {
        let rules = rules(&[]);
        let memo = SignatureMemo::default();
        let first = memo.sign(
            "POST",
            "api.openai.com",
            "/v1/chat/completions",
            [],
            BODY,
            &rules,
        );
        let again = memo.sign(
            "POST",
            "api.openai.com",
            "/v1/chat/completions",
            [],
            BODY,
            &rules,
        );
        let signed = Signature::of(
            "POST",
            "api.openai.com",
            "/v1/chat/completions",
            Body::Bytes(BODY),
            &rules,
        );
        assert_eq!(memo.len(), 1);
        for s in [&first, &again] {
            assert_eq!(s, &signed);
            assert_eq!(s.canonical(), signed.canonical());
        }
    }

    /// Method, host, target, headers and body.
    type Request<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a [(&'a str, &'a [u8])],
        &'a [u8],
    );

    #[test]
    fn every_signed_part_tells_requests_apart() {
        let rules = rules(&["x-tenant"]);
        let memo = SignatureMemo::default();
        let other_body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"ho"}]}"#;
        let variants: [Request<'_>; 6] = [
            (
                "POST",
                "api.openai.com",
                "/v1/chat/completions",
                &[("x-tenant", b"a")],
                BODY,
            ),
            (
                "PUT",
                "api.openai.com",
                "/v1/chat/completions",
                &[("x-tenant", b"a")],
                BODY,
            ),
            (
                "POST",
                "api.x.ai",
                "/v1/chat/completions",
                &[("x-tenant", b"a")],
                BODY,
            ),
            (
                "POST",
                "api.openai.com",
                "/v1/chat/completions?a=1",
                &[("x-tenant", b"a")],
                BODY,
            ),
            (
                "POST",
                "api.openai.com",
                "/v1/chat/completions",
                &[("x-tenant", b"b")],
                BODY,
            ),
            (
                "POST",
                "api.openai.com",
                "/v1/chat/completions",
                &[("x-tenant", b"a")],
                other_body,
            ),
        ];
        for _ in 0..2 {
            for (method, host, target, headers, body) in variants {
                let remembered =
                    memo.sign(method, host, target, headers.iter().copied(), body, &rules);
                let signed = Signature::with_headers(
                    method,
                    host,
                    target,
                    headers.iter().copied(),
                    Body::Bytes(body),
                    &rules,
                );
                assert_eq!(remembered, signed, "{method} {host}{target}");
                assert_eq!(remembered.host(), signed.host());
            }
        }
        assert_eq!(memo.len(), variants.len());
        // A header the rules leave out is not part of the request.
        memo.sign(
            "POST",
            "api.openai.com",
            "/v1/chat/completions",
            [("x-tenant", &b"a"[..]), ("x-request-id", &b"1"[..])],
            BODY,
            &rules,
        );
        assert_eq!(memo.len(), variants.len());
    }

    #[test]
    fn a_full_memo_starts_over() {
        let rules = rules(&[]);
        let memo = SignatureMemo::default();
        for i in 0..=MAX_ENTRIES {
            let target = format!("/v1/models/{i}");
            memo.sign("GET", "api.openai.com", &target, [], b"", &rules);
        }
        assert_eq!(memo.len(), 1);
    }
}
