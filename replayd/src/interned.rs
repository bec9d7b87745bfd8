//! Recorded header fields kept for the life of the process, once per distinct name or
//! value. hyper clones every header of an answer it is given and drops them once written;
//! a header whose bytes are `'static` is cloned and dropped without touching a reference
//! count, and on a load of 100,000 answers a second those counts took about 5% of
//! replayd's CPU. What is kept is bounded by the distinct fields of the snapshots loaded:
//! a run loads its snapshot once, and loading the same one again keeps nothing new.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{LazyLock, Mutex, PoisonError};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

static NAMES: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Mutex::default);
static VALUES: LazyLock<Mutex<HashSet<&'static [u8]>>> = LazyLock::new(Mutex::default);

/// `name`, its bytes kept for the life of the process.
pub fn name(name: &HeaderName) -> HeaderName {
    // A checked name is lowercase and legal, all `from_static` asks.
    HeaderName::from_static(kept(&NAMES, name.as_str()))
}

/// `value`, its bytes kept for the life of the process.
pub fn value(value: &HeaderValue) -> HeaderValue {
    let kept = Bytes::from_static(kept(&VALUES, value.as_bytes()));
    // The bytes were checked as `value`; a failure cannot happen, and would keep the
    // value as it was.
    let mut interned = HeaderValue::from_maybe_shared(kept).unwrap_or_else(|_| value.clone());
    interned.set_sensitive(value.is_sensitive());
    interned
}

/// The kept copy of `value` in `set`, made on first sight.
fn kept<T>(set: &Mutex<HashSet<&'static T>>, value: &T) -> &'static T
where
    T: ?Sized + Eq + Hash,
    for<'a> Box<T>: From<&'a T>,
{
    let mut set = set.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(kept) = set.get(value) {
        return kept;
    }
    let kept: &'static T = Box::leak(Box::from(value));
    set.insert(kept);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_is_kept_once_and_equals_what_it_was() {
        let custom = HeaderName::from_static("x-request-id");
        let header = HeaderValue::from_static("req_123");
        let (first, second) = (value(&header), value(&header));
        assert_eq!(first, header);
        assert!(
            std::ptr::eq(first.as_bytes(), second.as_bytes()),
            "one copy per distinct value"
        );
        assert_eq!(name(&custom), custom);
        assert_eq!(
            name(&http::header::CONTENT_TYPE),
            http::header::CONTENT_TYPE
        );
        let mut secret = HeaderValue::from_static("Bearer x");
        secret.set_sensitive(true);
        assert!(value(&secret).is_sensitive());
    }
}
