//! rustls in a Rust executable that keeps its symbol table: where its plaintext
//! functions are, read from the mangled names in `.symtab` (legacy or v0 mangling,
//! demangled with `rustc-demangle`), never guessed. rustls is linked into the
//! executable, so the executable is the TLS object.
//!
//! Plaintext passes through `<rustls::conn::connection::Writer as Write>::write` (what
//! the program sends, queued as records) and `<rustls::conn::connection::Reader as
//! Read>::read` (what it receives, decrypted earlier). The trait's path depends on the
//! toolchain (`std::io::Write`, or `core::io::write::Write` in newer ones), so only the
//! implementing type and the method are matched. An optimised build may inline either
//! function into its callers; then it is not in the table, and the executable gets no
//! probes. How the kernel finds each call's socket is in `ebpf/src/probes/rustls.rs`.

use object::{Object as _, ObjectSymbol as _};

/// The implementing type of [`Functions::write`].
pub const WRITER: &str = "<rustls::conn::connection::Writer as ";
/// The implementing type of [`Functions::read`].
pub const READER: &str = "<rustls::conn::connection::Reader as ";
/// `Writer::write`, as the summary and errors name it.
pub const WRITE: &str = "rustls Writer::write";
/// `Reader::read`, as the summary and errors name it.
pub const READ: &str = "rustls Reader::read";

/// Where an executable defines the probed functions: virtual address and size of
/// every copy (a program may link two rustls versions).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Functions {
    /// `<Writer as Write>::write`.
    pub write: Vec<(u64, u64)>,
    /// `<Reader as Read>::read`.
    pub read: Vec<(u64, u64)>,
}

/// The rustls functions `object`'s symbol table defines; None when it defines
/// neither (no rustls, rustls inlined, or no symbol table).
pub fn find(object: &object::File<'_>) -> Option<Functions> {
    let mut found = Functions::default();
    for symbol in object.symbols() {
        let Ok(name) = symbol.name() else { continue };
        // Both manglings spell the crate name out (`6rustls`); most symbols are passed over here.
        if !name.contains("rustls") || !symbol.is_definition() || symbol.size() == 0 {
            continue;
        }
        let demangled = format!("{:#}", rustc_demangle::demangle(name));
        let slot = if is_method(&demangled, WRITER, "Write>::write") {
            &mut found.write
        } else if is_method(&demangled, READER, "Read>::read") {
            &mut found.read
        } else {
            continue;
        };
        let at = (symbol.address(), symbol.size());
        if !slot.contains(&at) {
            slot.push(at);
        }
    }
    (!found.write.is_empty() || !found.read.is_empty()).then_some(found)
}

/// Whether `demangled` is `<TYPE as PATH::TRAIT>::METHOD`, `tail` being `TRAIT>::METHOD`.
fn is_method(demangled: &str, implementing: &str, tail: &str) -> bool {
    demangled.strip_prefix(implementing).is_some_and(|rest| {
        rest.strip_suffix(tail)
            .is_some_and(|path| path.is_empty() || path.ends_with("::"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_matched_whatever_the_traits_path() {
        for name in [
            "<rustls::conn::connection::Writer as std::io::Write>::write",
            "<rustls::conn::connection::Writer as core::io::write::Write>::write",
        ] {
            assert!(is_method(name, WRITER, "Write>::write"), "{name}");
        }
        for name in [
            "<rustls::conn::connection::Writer as core::io::write::Write>::write_vectored",
            "<rustls::conn::connection::Writer as core::io::write::Write>::flush",
            "<rustls::conn::connection::Writer as my::NotWrite>::write",
            "<rustls::conn::connection::Reader as alloc::io::read::Read>::read::{closure#0}",
        ] {
            assert!(!is_method(name, WRITER, "Write>::write"), "{name}");
            assert!(!is_method(name, READER, "Read>::read"), "{name}");
        }
        assert!(is_method(
            "<rustls::conn::connection::Reader as alloc::io::read::Read>::read",
            READER,
            "Read>::read"
        ));
    }

    #[test]
    fn v0_and_legacy_names_demangle_to_the_method() {
        let v0 = "_RNvXs5_NtNtCsggspKLHEXwT_6rustls4conn10connectionNtB5_6WriterNtNtNtCskADBYZwJmSU_4core2io5write5Write5write";
        assert_eq!(
            format!("{:#}", rustc_demangle::demangle(v0)),
            "<rustls::conn::connection::Writer as core::io::write::Write>::write"
        );
        let legacy = "_ZN66_$LT$rustls..conn..connection..Reader$u20$as$u20$std..io..Read$GT$4read17h0123456789abcdefE";
        let demangled = format!("{:#}", rustc_demangle::demangle(legacy));
        assert!(is_method(&demangled, READER, "Read>::read"), "{demangled}");
    }
}
