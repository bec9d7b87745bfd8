//! Request signatures: what makes two requests "the same" for replay. A [`Signature`] is a
//! SHA-256 digest of a canonical form of the request: the method, host and path, the
//! query parameters (sorted, `key` always dropped), the headers named by
//! [`MatchRules::include_headers`] (none by default), and the JSON body with its object
//! keys sorted, its numbers normalised (`1`, `1.0` and `1e0` are equal), volatile fields
//! removed ([`DEFAULT_IGNORED_POINTERS`] plus the snapshot's own rules), masked patterns
//! replaced and tool-call ids renamed by order of first appearance, so an agent loop's
//! growing conversation matches its recording. [`SignatureIndex`] serves recorded
//! exchanges by signature in recorded order, applies the [`Repeat`] policy once they run
//! out, and for a miss finds the closest recorded request and a field-level diff.
//!
//! One file per concern, each using only those before it: `trie` (the JSON-pointer
//! trie), `rules` (the match rules and their compiled form), `canonical` (the canonical
//! request and body emitter), `digest` (the [`Signature`]), `memo` (signatures remembered
//! by the exact request, for servers that see the same requests again) and `index`
//! (lookup, repeat policy and closest-match diff).

mod canonical;
mod digest;
mod index;
mod memo;
mod rules;
#[cfg(test)]
mod test_support;
mod trie;

pub use canonical::{Body, CanonicalBody, CanonicalRequest};
pub use digest::Signature;
pub use index::{FieldDiff, Repeat, Served, SignatureIndex};
pub use memo::SignatureMemo;
pub use rules::{
    ALWAYS_DROPPED_QUERY, CompiledRules, DEFAULT_IGNORED_POINTERS, MASKED, MaskRule, MatchRules,
    SignatureError,
};
