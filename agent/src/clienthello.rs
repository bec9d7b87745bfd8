//! The server name (SNI) in the first bytes a TLS client writes: a bounded parser of the
//! TLS record that carries the `ClientHello` (RFC 8446 section 4.1.2, RFC 6066 section 3).
//! It reads only the bytes it is given, which may be a prefix of the record (the kernel
//! copies the start of a connection's first write), and finds the name when the prefix
//! reaches the end of the `server_name` extension. No length in the input is trusted: every
//! field is checked against the bytes that are there.

/// The TLS record content type of a handshake record.
pub const HANDSHAKE_RECORD: u8 = 0x16;
/// The handshake message type of a `ClientHello`.
const CLIENT_HELLO: u8 = 1;
/// The extension type of `server_name`.
const SERVER_NAME_EXTENSION: u16 = 0;
/// The `name_type` of a DNS host name in a `server_name` list.
const HOST_NAME: u8 = 0;

/// Why the first bytes of a connection gave no server name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHelloError {
    /// The bytes are not a TLS handshake record holding a `ClientHello`.
    #[error("not a TLS ClientHello: {what}")]
    NotClientHello {
        /// What did not match, for example "record type 0x17".
        what: String,
    },
    /// The bytes end before the `server_name` extension was reached or read whole.
    #[error("the ClientHello is cut off at {available} bytes, before its server name")]
    Truncated {
        /// How many bytes there were.
        available: usize,
    },
    /// A length inside the `ClientHello` points past the structure that holds it.
    #[error("malformed ClientHello: {what} runs past its enclosing structure")]
    Malformed {
        /// The field, for example "extensions".
        what: &'static str,
    },
    /// The server name is not a valid DNS host name in ASCII.
    #[error("the ClientHello's server name is not an ASCII host name")]
    BadName,
}

/// A cursor over a byte slice that may be a prefix of the real structure: reading past its
/// end is [`ClientHelloError::Truncated`], past a declared length [`ClientHelloError::Malformed`].
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Where the enclosing structure ends, by its declared length (may be past `bytes`).
    end: usize,
    /// The whole input's length, for the error.
    available: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        let stop = self
            .at
            .checked_add(n)
            .ok_or(ClientHelloError::Malformed { what })?;
        if stop > self.end {
            return Err(ClientHelloError::Malformed { what });
        }
        let slice = self
            .bytes
            .get(self.at..stop)
            .ok_or(ClientHelloError::Truncated {
                available: self.available,
            })?;
        self.at = stop;
        Ok(slice)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ClientHelloError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ClientHelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self, what: &'static str) -> Result<usize, ClientHelloError> {
        let b = self.take(3, what)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    /// Skips a vector with a length prefix of `prefix` bytes.
    fn skip_vec(&mut self, prefix: usize, what: &'static str) -> Result<(), ClientHelloError> {
        let n = match prefix {
            1 => usize::from(self.u8(what)?),
            _ => usize::from(self.u16(what)?),
        };
        self.take(n, what).map(drop)
    }

    /// A reader over the next `n` bytes, as a structure of declared length `n`.
    fn nested(&mut self, n: usize, what: &'static str) -> Result<Reader<'a>, ClientHelloError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(ClientHelloError::Malformed { what })?;
        if end > self.end {
            return Err(ClientHelloError::Malformed { what });
        }
        let inner = Reader {
            bytes: self.bytes,
            at: self.at,
            end,
            available: self.available,
        };
        self.at = end;
        Ok(inner)
    }
}

/// The host name a `ClientHello` asks for, from the first bytes of a connection: `Ok(None)`
/// when the `ClientHello` (read through its extensions) has no `server_name` host name.
/// The name is returned in lower case, as DNS names compare.
pub fn server_name(first_bytes: &[u8]) -> Result<Option<String>, ClientHelloError> {
    let mut record = Reader {
        bytes: first_bytes,
        at: 0,
        end: usize::MAX,
        available: first_bytes.len(),
    };
    let content_type = record.u8("record header")?;
    if content_type != HANDSHAKE_RECORD {
        return Err(ClientHelloError::NotClientHello {
            what: format!("record type {content_type:#04x}"),
        });
    }
    let version = record.u16("record header")?;
    if version >> 8 != 3 {
        return Err(ClientHelloError::NotClientHello {
            what: format!("record version {version:#06x}"),
        });
    }
    let length = usize::from(record.u16("record header")?);
    let mut body = record.nested(length, "record")?;
    let message = body.u8("handshake header")?;
    if message != CLIENT_HELLO {
        return Err(ClientHelloError::NotClientHello {
            what: format!("handshake type {message}"),
        });
    }
    // A `ClientHello` longer than its first record continues in the next one; what this
    // record holds is read as far as it goes.
    let declared = body.u24("handshake header")?;
    let mut hello = body.nested(declared.min(body.end - body.at), "ClientHello")?;
    hello.take(2 + 32, "version and random")?;
    hello.skip_vec(1, "session id")?;
    hello.skip_vec(2, "cipher suites")?;
    hello.skip_vec(1, "compression methods")?;
    if hello.at == hello.end {
        return Ok(None); // No extensions at all.
    }
    let extensions_length = usize::from(hello.u16("extensions")?);
    let mut extensions = hello.nested(extensions_length, "extensions")?;
    while extensions.at < extensions.end {
        let kind = extensions.u16("extension")?;
        let length = usize::from(extensions.u16("extension")?);
        let mut extension = extensions.nested(length, "extension")?;
        if kind != SERVER_NAME_EXTENSION {
            continue;
        }
        let list_length = usize::from(extension.u16("server name list")?);
        let mut list = extension.nested(list_length, "server name list")?;
        while list.at < list.end {
            let name_type = list.u8("server name")?;
            let length = usize::from(list.u16("server name")?);
            let name = list.take(length, "server name")?;
            if name_type == HOST_NAME {
                return host_name(name).map(Some);
            }
        }
        return Ok(None);
    }
    Ok(None)
}

/// A host name from the extension: ASCII letters, digits, `-`, `_` and `.`, lower-cased.
fn host_name(name: &[u8]) -> Result<String, ClientHelloError> {
    if name.is_empty()
        || !name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(ClientHelloError::BadName);
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first record of real `ClientHello` messages, as each client wrote it to a
    /// loopback listener: curl 7.88 (OpenSSL 3), Python 3.11's `ssl`, and Java 17's
    /// `HttpClient` (JSSE).
    const CURL: &[u8] = include_bytes!("../tests/data/clienthello-curl.bin");
    const PYTHON: &[u8] = include_bytes!("../tests/data/clienthello-python.bin");
    const JAVA: &[u8] = include_bytes!("../tests/data/clienthello-java.bin");

    #[test]
    fn real_client_hellos_name_their_server() {
        assert_eq!(server_name(CURL), Ok(Some("api.openai.com".into())));
        assert_eq!(
            server_name(PYTHON),
            Ok(Some("generativelanguage.googleapis.com".into()))
        );
        assert_eq!(server_name(JAVA), Ok(Some("api.openai.com".into())));
    }

    #[test]
    fn every_prefix_gives_the_name_or_says_it_is_cut_off() {
        for hello in [CURL, PYTHON, JAVA] {
            let whole = server_name(hello).unwrap();
            for n in 0..hello.len() {
                match server_name(&hello[..n]) {
                    Ok(name) => assert_eq!(name, whole, "prefix of {n} bytes"),
                    Err(ClientHelloError::Truncated { available }) => assert_eq!(available, n),
                    Err(e) => panic!("prefix of {n} bytes: {e}"),
                }
            }
        }
    }

    #[test]
    fn other_bytes_are_not_client_hellos() {
        assert!(matches!(
            server_name(b"POST /v1/chat/completions HTTP/1.1\r\n"),
            Err(ClientHelloError::NotClientHello { .. })
        ));
        let mut server_hello = CURL.to_vec();
        server_hello[5] = 2;
        assert!(matches!(
            server_name(&server_hello),
            Err(ClientHelloError::NotClientHello { .. })
        ));
    }

    #[test]
    fn lengths_past_their_structure_are_malformed_and_never_panic() {
        // The extensions' length claims more than the record holds.
        let mut bad = CURL.to_vec();
        let at = 5 + 4 + 2 + 32;
        let session = usize::from(bad[at]);
        let suites_at = at + 1 + session;
        let suites = usize::from(u16::from_be_bytes([bad[suites_at], bad[suites_at + 1]]));
        let compression_at = suites_at + 2 + suites;
        let extensions_at = compression_at + 1 + usize::from(bad[compression_at]);
        bad[extensions_at] = 0xff;
        assert_eq!(
            server_name(&bad),
            Err(ClientHelloError::Malformed { what: "extensions" })
        );
        // Every single-byte corruption is an answer or an error, never a panic.
        for i in 0..CURL.len() {
            for value in [0x00, 0x01, 0x7f, 0xff] {
                let mut corrupt = CURL.to_vec();
                corrupt[i] = value;
                let _ = server_name(&corrupt);
            }
        }
    }

    #[test]
    fn a_client_hello_without_server_name_has_none() {
        // A minimal `ClientHello`: version, random, empty session id, one suite, null
        // compression, no extensions.
        let mut hello = vec![0x03, 0x03];
        hello.extend([0u8; 32]);
        hello.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
        let mut message = vec![CLIENT_HELLO, 0, 0, u8::try_from(hello.len()).unwrap()];
        message.extend(&hello);
        let mut record = vec![
            HANDSHAKE_RECORD,
            3,
            1,
            0,
            u8::try_from(message.len()).unwrap(),
        ];
        record.extend(&message);
        assert_eq!(server_name(&record), Ok(None));
    }
}
