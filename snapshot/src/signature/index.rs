//! [`SignatureIndex`]: recorded signatures looked up by digest and host, each serving its
//! exchanges in recorded order, then the [`Repeat`] policy once they are used up; and
//! for a miss, the closest recorded request with a field-level diff ([`FieldDiff`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::canonical::{CanonicalBody, CanonicalRequest};
use super::digest::Signature;
use super::rules::{SignatureError, escape_segment};

/// Weight of a method, host or path difference in [`SignatureIndex::closest`].
const ROUTE_WEIGHT: usize = 1_000;
/// Longest value shown in a [`FieldDiff`]'s `Display`.
const MAX_SHOWN: usize = 160;

/// What [`SignatureIndex`] does once a signature's recorded exchanges are used up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Repeat {
    /// Serve the last recorded exchange again (reported as a repeat).
    #[default]
    Last,
    /// Start again from the first recorded exchange (reported as a repeat).
    Cycle,
    /// Serve nothing: the request is a miss.
    Fail,
}

impl std::str::FromStr for Repeat {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "last" => Ok(Self::Last),
            "cycle" => Ok(Self::Cycle),
            "fail" => Ok(Self::Fail),
            _ => Err(SignatureError::UnknownRepeat {
                value: s.to_owned(),
            }),
        }
    }
}

/// An exchange chosen by [`SignatureIndex::next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    /// The exchange index given to [`SignatureIndex::new`].
    pub exchange: usize,
    /// True when the recorded exchanges for this signature were already used up and the
    /// [`Repeat`] policy chose this one: count it as a warning.
    pub repeated: bool,
}

/// The recorded exchanges of one signature (a digest on one host) and how many were served.
#[derive(Debug)]
struct Entry {
    host: String,
    exchanges: Vec<usize>,
    served: AtomicUsize,
}

/// Recorded signatures, looked up by digest (a hash map, never a scan), then by host among
/// the few hosts that recorded that digest; each serves its exchanges in recorded order.
/// Lookups take `&self`, allocate nothing and are safe from many connections.
#[derive(Debug)]
pub struct SignatureIndex {
    by_digest: HashMap<[u8; 32], Vec<Entry>, BuildHasherDefault<DigestHasher>>,
    recorded: Vec<(usize, Arc<CanonicalRequest>)>,
    /// Only a miss needs them: built on the first one, not at start-up.
    neighbourhoods: OnceLock<Neighbourhoods>,
    repeat: Repeat,
}

/// Recorded positions grouped by route and by host, where [`SignatureIndex::closest`]
/// looks first.
#[derive(Debug, Default)]
struct Neighbourhoods {
    by_route: HashMap<(String, String, String), Vec<usize>>,
    by_host: HashMap<String, Vec<usize>>,
}

impl Neighbourhoods {
    fn of(recorded: &[(usize, Arc<CanonicalRequest>)]) -> Self {
        let mut groups = Self::default();
        for (position, (_, c)) in recorded.iter().enumerate() {
            groups
                .by_route
                .entry((c.method.clone(), c.host.clone(), c.path.clone()))
                .or_default()
                .push(position);
            groups
                .by_host
                .entry(c.host.clone())
                .or_default()
                .push(position);
        }
        groups
    }
}

/// Hashes a SHA-256 digest by its first eight bytes: they are already uniform, so
/// hashing them again would only cost time on every start-up and lookup.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(word);
    }
}

impl SignatureIndex {
    /// Builds the index from (exchange index, signature) pairs in recorded order.
    pub fn new(entries: impl IntoIterator<Item = (usize, Signature)>, repeat: Repeat) -> Self {
        let entries = entries.into_iter();
        let mut index = Self {
            by_digest: HashMap::with_capacity_and_hasher(
                entries.size_hint().0,
                BuildHasherDefault::default(),
            ),
            recorded: Vec::with_capacity(entries.size_hint().0),
            neighbourhoods: OnceLock::new(),
            repeat,
        };
        for (exchange, signature) in entries {
            let hosts = index.by_digest.entry(signature.digest).or_default();
            let position = hosts
                .iter()
                .position(|e| e.host == signature.host())
                .unwrap_or_else(|| {
                    hosts.push(Entry {
                        host: signature.host().to_owned(),
                        exchanges: Vec::new(),
                        served: AtomicUsize::new(0),
                    });
                    hosts.len() - 1
                });
            hosts[position].exchanges.push(exchange);
            index.recorded.push((exchange, signature.canonical));
        }
        index
    }

    /// The recorded exchanges of `signature`'s request addressed to `host`.
    fn entry(&self, signature: &Signature, host: &str) -> Option<&Entry> {
        self.by_digest
            .get(&signature.digest)?
            .iter()
            .find(|e| e.host == host)
    }

    /// How many exchanges the index holds.
    pub fn len(&self) -> usize {
        self.recorded.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.recorded.is_empty()
    }

    /// How many exchanges were recorded with `signature`.
    pub fn recorded_count(&self, signature: &Signature) -> usize {
        self.recorded_count_at(signature, signature.host())
    }

    /// How many exchanges were recorded with `signature`'s request addressed to `host`.
    pub fn recorded_count_at(&self, signature: &Signature, host: &str) -> usize {
        self.entry(signature, host).map_or(0, |e| e.exchanges.len())
    }

    /// The next exchange for `signature`: its recorded exchanges in recorded order, then
    /// what the [`Repeat`] policy says. `None` for a signature never recorded, or used up
    /// under [`Repeat::Fail`] (tell them apart with [`Self::recorded_count`]).
    pub fn next(&self, signature: &Signature) -> Option<Served> {
        self.next_at(signature, signature.host())
    }

    /// [`Self::next`] for `signature`'s request addressed to `host` (lower case): a
    /// request to an address that is no recorded host is looked up on each recorded one
    /// without being signed again.
    pub fn next_at(&self, signature: &Signature, host: &str) -> Option<Served> {
        let entry = self.entry(signature, host)?;
        let count = entry.exchanges.len();
        let n = entry.served.fetch_add(1, Ordering::Relaxed);
        if n < count {
            return Some(Served {
                exchange: entry.exchanges[n],
                repeated: false,
            });
        }
        let exchange = match self.repeat {
            Repeat::Last => entry.exchanges.last().copied(),
            Repeat::Cycle => entry.exchanges.get(n % count).copied(),
            Repeat::Fail => None,
        }?;
        Some(Served {
            exchange,
            repeated: true,
        })
    }

    /// Rewinds every signature to its first recorded exchange.
    pub fn rewind(&self) {
        for entry in self.by_digest.values().flatten() {
            entry.served.store(0, Ordering::Relaxed);
        }
    }

    /// For a miss: the recorded request nearest to `requested` and how they differ.
    /// Requests with the same method, host and path are searched first, then the same
    /// host, then all; among them the one with the smallest field-level distance wins,
    /// the earliest on a tie.
    pub fn closest(&self, requested: &CanonicalRequest) -> Option<(usize, Vec<FieldDiff>)> {
        let route = (
            requested.method.clone(),
            requested.host.clone(),
            requested.path.clone(),
        );
        let groups = self
            .neighbourhoods
            .get_or_init(|| Neighbourhoods::of(&self.recorded));
        let all: Vec<usize>;
        let candidates: &[usize] = if let Some(same) = groups.by_route.get(&route) {
            same
        } else if let Some(same) = groups.by_host.get(&requested.host) {
            same
        } else {
            all = (0..self.recorded.len()).collect();
            &all
        };
        let requested_body = requested.body.to_value();
        let mut best: Option<(usize, usize)> = None;
        for &position in candidates {
            let cap = best.map_or(usize::MAX, |(_, d)| d);
            let mut sink = DiffSink::counting(cap);
            compare_requests(
                &self.recorded[position].1,
                requested,
                requested_body.as_ref(),
                &mut sink,
            );
            if !sink.over_cap() && best.is_none_or(|(_, d)| sink.weight < d) {
                best = Some((position, sink.weight));
            }
        }
        let (position, _) = best?;
        let (exchange, recorded) = &self.recorded[position];
        let mut sink = DiffSink::collecting();
        compare_requests(recorded, requested, requested_body.as_ref(), &mut sink);
        Some((*exchange, sink.diffs))
    }
}

/// One difference between a recorded request and a requested one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDiff {
    /// Where: a JSON pointer into the body (`/messages/2/content`; empty for the whole
    /// body), or `method`, `host`, `path`, `?name` for a query parameter, or
    /// `header name` for a header.
    pub pointer: String,
    /// The recorded value, `None` when the recorded request lacks it.
    pub recorded: Option<Value>,
    /// The requested value, `None` when the request lacks it.
    pub requested: Option<Value>,
}

impl fmt::Display for FieldDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = if self.pointer.is_empty() {
            "body"
        } else {
            &self.pointer
        };
        let show = |v: &Option<Value>| match v {
            None => "(absent)".to_owned(),
            Some(v) => {
                let text = v.to_string();
                if text.chars().count() > MAX_SHOWN {
                    let cut: String = text.chars().take(MAX_SHOWN).collect();
                    format!("{cut}…")
                } else {
                    text
                }
            }
        };
        write!(
            f,
            "{place}: recorded {}, requested {}",
            show(&self.recorded),
            show(&self.requested)
        )
    }
}

/// Collects differences, or only weighs them with an early stop.
struct DiffSink {
    diffs: Vec<FieldDiff>,
    collect: bool,
    weight: usize,
    cap: usize,
}

impl DiffSink {
    fn counting(cap: usize) -> Self {
        Self {
            diffs: Vec::new(),
            collect: false,
            weight: 0,
            cap,
        }
    }

    fn collecting() -> Self {
        Self {
            diffs: Vec::new(),
            collect: true,
            weight: 0,
            cap: usize::MAX,
        }
    }

    fn over_cap(&self) -> bool {
        self.weight >= self.cap
    }

    fn add(
        &mut self,
        pointer: impl FnOnce() -> String,
        weight: usize,
        recorded: Option<&Value>,
        requested: Option<&Value>,
    ) {
        self.weight = self.weight.saturating_add(weight);
        if self.collect {
            self.diffs.push(FieldDiff {
                pointer: pointer(),
                recorded: recorded.cloned(),
                requested: requested.cloned(),
            });
        }
    }
}

/// Compares two canonical requests; `requested_body` is `requested.body.to_value()`,
/// parsed once by the caller.
fn compare_requests(
    recorded: &CanonicalRequest,
    requested: &CanonicalRequest,
    requested_body: Option<&Value>,
    sink: &mut DiffSink,
) {
    for (name, a, b) in [
        ("method", &recorded.method, &requested.method),
        ("host", &recorded.host, &requested.host),
        ("path", &recorded.path, &requested.path),
    ] {
        if a != b {
            sink.add(
                || name.to_owned(),
                ROUTE_WEIGHT,
                Some(&Value::String(a.clone())),
                Some(&Value::String(b.clone())),
            );
        }
    }
    compare_pairs("?", &recorded.query, &requested.query, sink);
    compare_pairs("header ", &recorded.headers, &requested.headers, sink);
    if sink.over_cap() {
        return;
    }
    if recorded.body == requested.body {
        return;
    }
    let recorded_body = recorded.body.to_value();
    match (
        &recorded.body,
        &recorded_body,
        &requested.body,
        requested_body,
    ) {
        (CanonicalBody::Json(_), Some(a), CanonicalBody::Json(_), Some(b)) => {
            let mut pointer = String::new();
            compare_values(&mut pointer, a, b, sink);
        }
        (_, a, _, b) => {
            let weight = leaves(a.as_ref()).max(leaves(b));
            sink.add(String::new, weight, a.as_ref(), b);
        }
    }
}

/// Compares query parameters or headers by name.
fn compare_pairs(
    prefix: &str,
    recorded: &[(String, String)],
    requested: &[(String, String)],
    sink: &mut DiffSink,
) {
    fn group(list: &[(String, String)]) -> BTreeMap<&str, Vec<&str>> {
        let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (k, v) in list {
            map.entry(k.as_str()).or_default().push(v.as_str());
        }
        map
    }
    let (a, b) = (group(recorded), group(requested));
    let mut names: Vec<&str> = a.keys().chain(b.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    let as_value = |values: Option<&Vec<&str>>| values.map(|v| Value::String(v.join(",")));
    for name in names {
        let (x, y) = (a.get(name), b.get(name));
        if x != y {
            sink.add(
                || format!("{prefix}{name}"),
                1,
                as_value(x).as_ref(),
                as_value(y).as_ref(),
            );
        }
    }
}

/// Compares two canonical JSON values, reporting the smallest differing subtrees.
fn compare_values(pointer: &mut String, a: &Value, b: &Value, sink: &mut DiffSink) {
    if sink.over_cap() {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&escape_segment(key));
                compare_optional(pointer, x.get(key.as_str()), y.get(key.as_str()), sink);
                pointer.truncate(len);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&i.to_string());
                compare_optional(pointer, x.get(i), y.get(i), sink);
                pointer.truncate(len);
            }
        }
        (x, y) if x == y => {}
        (x, y) => {
            let weight = leaves(Some(x)).max(leaves(Some(y)));
            sink.add(|| pointer.clone(), weight, Some(x), Some(y));
        }
    }
}

fn compare_optional(
    pointer: &mut String,
    a: Option<&Value>,
    b: Option<&Value>,
    sink: &mut DiffSink,
) {
    match (a, b) {
        (Some(a), Some(b)) => compare_values(pointer, a, b, sink),
        (None, None) => {}
        (a, b) => {
            let weight = leaves(a).max(leaves(b));
            sink.add(|| pointer.clone(), weight, a, b);
        }
    }
}

/// How many scalars a value holds (at least one), the weight of its difference.
fn leaves(value: Option<&Value>) -> usize {
    match value {
        None => 0,
        Some(Value::Object(map)) => map.values().map(|v| leaves(Some(v))).sum::<usize>().max(1),
        Some(Value::Array(items)) => items.iter().map(|v| leaves(Some(v))).sum::<usize>().max(1),
        Some(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::signature::Body;
    use crate::signature::test_support::{chat, rules, sig};

    #[test]
    fn duplicates_are_served_in_order_then_repeat_applies() {
        let r = rules();
        let a = sig(&chat("a"), &r);
        let b = sig(&chat("b"), &r);
        let entries = vec![
            (0, a.clone()),
            (1, b.clone()),
            (2, a.clone()),
            (5, a.clone()),
        ];
        let served = |index: &SignatureIndex| index.next(&a).map(|s| (s.exchange, s.repeated));

        let last = SignatureIndex::new(entries.clone(), Repeat::Last);
        assert_eq!(last.recorded_count(&a), 3);
        let got: Vec<_> = (0..5).map(|_| served(&last)).collect();
        assert_eq!(
            got,
            [
                Some((0, false)),
                Some((2, false)),
                Some((5, false)),
                Some((5, true)),
                Some((5, true))
            ]
        );
        assert_eq!(
            last.next(&b),
            Some(Served {
                exchange: 1,
                repeated: false
            })
        );

        let cycle = SignatureIndex::new(entries.clone(), Repeat::Cycle);
        let got: Vec<_> = (0..5).map(|_| served(&cycle)).collect();
        assert_eq!(
            got,
            [
                Some((0, false)),
                Some((2, false)),
                Some((5, false)),
                Some((0, true)),
                Some((2, true))
            ]
        );

        let fail = SignatureIndex::new(entries, Repeat::Fail);
        let got: Vec<_> = (0..4).map(|_| served(&fail)).collect();
        assert_eq!(
            got,
            [Some((0, false)), Some((2, false)), Some((5, false)), None]
        );
        fail.rewind();
        assert_eq!(served(&fail), Some((0, false)));

        let unknown = sig(&chat("never recorded"), &r);
        assert_eq!(fail.next(&unknown), None);
        assert_eq!(fail.recorded_count(&unknown), 0);

        assert_eq!("cycle".parse::<Repeat>().unwrap(), Repeat::Cycle);
        assert!("sometimes".parse::<Repeat>().is_err());
    }

    #[test]
    fn closest_names_the_differing_field() {
        let r = rules();
        let recorded = [
            chat("What is the capital of France?"),
            chat("Tell me a joke"),
            {
                let mut b = chat("What is the capital of France?");
                b["temperature"] = json!(0.0);
                b["max_tokens"] = json!(100);
                b
            },
        ];
        let mut entries: Vec<(usize, Signature)> = recorded
            .iter()
            .enumerate()
            .map(|(i, b)| (i, sig(b, &r)))
            .collect();
        // An embeddings request on another path does not distract.
        let other = json!({"input": "What is the capital of Italy?", "model": "gpt-4o-mini"});
        entries.push((
            3,
            Signature::of(
                "POST",
                "api.openai.com",
                "/v1/embeddings",
                Body::Json(&other),
                &r,
            ),
        ));
        let index = SignatureIndex::new(entries, Repeat::Last);

        let requested = sig(&chat("What is the capital of Italy?"), &r);
        assert_eq!(index.next(&requested), None);
        let (exchange, diffs) = index.closest(requested.canonical()).unwrap();
        assert_eq!(exchange, 0);
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert_eq!(diffs[0].pointer, "/messages/0/content");
        assert_eq!(
            diffs[0].recorded,
            Some(json!("What is the capital of France?"))
        );
        assert_eq!(
            diffs[0].requested,
            Some(json!("What is the capital of Italy?"))
        );
        assert_eq!(
            diffs[0].to_string(),
            r#"/messages/0/content: recorded "What is the capital of France?", requested "What is the capital of Italy?""#
        );

        // An added field shows as absent on the recorded side.
        let mut extra = chat("Tell me a joke");
        extra["seed"] = json!(7);
        let (exchange, diffs) = index.closest(sig(&extra, &r).canonical()).unwrap();
        assert_eq!(exchange, 1);
        assert_eq!(
            diffs[0].to_string(),
            "/seed: recorded (absent), requested 7"
        );

        // No request on the same path: the same host is searched, and the path differs.
        let moved = Signature::of(
            "POST",
            "api.openai.com",
            "/v1/responses",
            Body::Json(&chat("Tell me a joke")),
            &r,
        );
        let (exchange, diffs) = index.closest(moved.canonical()).unwrap();
        assert_eq!(exchange, 1);
        assert_eq!(diffs[0].pointer, "path");

        let empty = SignatureIndex::new(Vec::new(), Repeat::Last);
        assert!(empty.closest(moved.canonical()).is_none());
    }

    #[test]
    fn another_host_is_a_lookup_not_another_signing() {
        let r = rules();
        let body = chat("hi");
        let on =
            |host: &str| Signature::of("POST", host, "/v1/chat/completions", Body::Json(&body), &r);
        let (recorded, listener) = (on("api.openai.com"), on("127.0.0.1"));
        // One digest for the request whatever its host; the host tells the signatures apart.
        assert_eq!(recorded.digest(), listener.digest());
        assert_ne!(recorded, listener);
        assert_ne!(recorded.hex(), listener.hex());
        let index = SignatureIndex::new([(7, recorded.clone())], Repeat::Fail);
        assert_eq!(index.next(&listener), None);
        assert_eq!(index.recorded_count(&listener), 0);
        assert_eq!(index.recorded_count_at(&listener, "api.openai.com"), 1);
        assert_eq!(
            index.next_at(&listener, "api.openai.com"),
            Some(Served {
                exchange: 7,
                repeated: false
            })
        );
        assert_eq!(index.next(&recorded), None, "used up under --repeat fail");
        // What users see stays the SHA-256 of the whole canonical request, host included:
        // sha256(`["POST","api.openai.com","/v1/models",[],[],["empty"]]`).
        assert_eq!(
            Signature::of("POST", "api.openai.com", "/v1/models", Body::Empty, &r).hex(),
            "7c7cfa85d175e55ac6994afc36b1e187dd50b91d2002bf036f9467166bb7aceb"
        );
    }

    #[test]
    fn large_index_lookup() {
        let r = rules();
        let signatures: Vec<(usize, Signature)> = (0..100_000)
            .map(|i| {
                let body = json!({"model": "m", "messages": [{"role": "user", "content": format!("prompt {i}")}]});
                (i, sig(&body, &r))
            })
            .collect();
        let wanted = signatures[76_543].1.clone();
        let index = SignatureIndex::new(signatures, Repeat::Last);
        assert_eq!(index.len(), 100_000);
        assert_eq!(index.next(&wanted).map(|s| s.exchange), Some(76_543));
    }
}
