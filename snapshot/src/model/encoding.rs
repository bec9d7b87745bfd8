//! Content-Encoding decoding. Bodies are stored decoded so they can be read,
//! diffed and redacted; this module undoes gzip, deflate (zlib-wrapped or raw),
//! br and zstd, segment by segment so each decoded byte keeps the arrival time
//! of the wire bytes that carried it.

use std::io::{self, Write};
use std::mem;

/// The most bytes a body may decode to; a compressed body that would grow past
/// this is refused rather than allowed to exhaust memory.
pub const MAX_DECODED_LEN: usize = 64 << 20;

/// Why a body could not be decoded from its Content-Encoding.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not valid data in the coding the header named (often a
    /// body cut short when the connection ended early).
    #[error("body is not valid {coding} data")]
    Corrupt {
        /// The coding that failed (`gzip`, `deflate`, `br`, `zstd`).
        coding: &'static str,
        /// The decoder's complaint.
        #[source]
        source: io::Error,
    },
    /// The body decodes to more than [`MAX_DECODED_LEN`] bytes.
    #[error("{coding} body decodes to more than {limit} bytes")]
    TooLarge {
        /// The coding being undone.
        coding: &'static str,
        /// The limit that was hit.
        limit: usize,
    },
}

/// Body pieces with the time (ms since request start) each arrived.
pub(crate) type Segments = Vec<(f64, Vec<u8>)>;

/// One content coding this crate can undo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Some(Self::Gzip),
            "deflate" => Some(Self::Deflate),
            "br" => Some(Self::Brotli),
            "zstd" => Some(Self::Zstd),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
            Self::Brotli => "br",
            Self::Zstd => "zstd",
        }
    }
}

/// The Content-Encoding header value worth recording: trimmed, lowercased, and
/// `None` for no coding at all (absent, empty or `identity`).
pub(crate) fn normalize(header: Option<&str>) -> Option<String> {
    let value = header?.trim().to_ascii_lowercase();
    let meaningful = value
        .split(',')
        .map(str::trim)
        .any(|c| !c.is_empty() && c != "identity");
    meaningful.then_some(value)
}

/// Undoes every coding in `header` (applied left to right, so undone right to
/// left). `Ok(None)` when a coding is unknown: the caller keeps the raw bytes.
pub(crate) fn decode<B: AsRef<[u8]>>(
    header: Option<&str>,
    segments: &[(f64, B)],
) -> Result<Option<Segments>, DecodeError> {
    let mut codings = Vec::new();
    for name in header.unwrap_or("").split(',').map(str::trim) {
        if name.is_empty() || name.eq_ignore_ascii_case("identity") {
            continue;
        }
        match Coding::parse(name) {
            Some(coding) => codings.push(coding),
            None => return Ok(None),
        }
    }
    let mut decoded: Segments = segments
        .iter()
        .map(|(at, bytes)| (*at, bytes.as_ref().to_vec()))
        .collect();
    for coding in codings.into_iter().rev() {
        decoded = decode_one(coding, &decoded)?;
    }
    Ok(Some(decoded))
}

fn decode_one(coding: Coding, segments: &[(f64, Vec<u8>)]) -> Result<Segments, DecodeError> {
    // An empty body stays empty whatever the header says (HEAD, 204, 304).
    if segments.iter().all(|(_, bytes)| bytes.is_empty()) {
        return Ok(segments.to_vec());
    }
    let head: Vec<u8> = segments
        .iter()
        .flat_map(|(_, bytes)| bytes.iter().copied())
        .take(2)
        .collect();
    let mut decoder = Decoder::new(coding, &head).map_err(|e| corrupt(coding, e))?;
    let mut out = Vec::with_capacity(segments.len());
    for (at, bytes) in segments {
        decoder
            .write_segment(bytes)
            .map_err(|e| decoder.error(coding, e))?;
        out.push((*at, decoder.take()));
    }
    decoder.finish().map_err(|e| decoder.error(coding, e))?;
    let rest = decoder.take();
    if let Some((_, last)) = out.last_mut() {
        last.extend(rest);
    }
    Ok(out)
}

fn corrupt(coding: Coding, source: io::Error) -> DecodeError {
    DecodeError::Corrupt {
        coding: coding.name(),
        source,
    }
}

/// The decoders' output: a buffer that refuses to grow past [`MAX_DECODED_LEN`].
#[derive(Default)]
struct Capped {
    buf: Vec<u8>,
    total: usize,
    over: bool,
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.total.saturating_add(data.len()) > MAX_DECODED_LEN {
            self.over = true;
            return Err(io::Error::other("decoded body too large"));
        }
        self.total += data.len();
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Write-side decoders, so output can be collected after each input segment.
enum Decoder {
    Gzip(flate2::write::MultiGzDecoder<Capped>),
    Zlib(flate2::write::ZlibDecoder<Capped>),
    RawDeflate(flate2::write::DeflateDecoder<Capped>),
    Brotli(Box<brotli::DecompressorWriter<Capped>>),
    Zstd(zstd::stream::write::Decoder<'static, Capped>),
}

impl Decoder {
    fn new(coding: Coding, head: &[u8]) -> io::Result<Self> {
        let out = Capped::default();
        Ok(match coding {
            Coding::Gzip => Self::Gzip(flate2::write::MultiGzDecoder::new(out)),
            // HTTP's "deflate" means zlib-wrapped, but some servers send raw deflate.
            Coding::Deflate if is_zlib_header(head) => {
                Self::Zlib(flate2::write::ZlibDecoder::new(out))
            }
            Coding::Deflate => Self::RawDeflate(flate2::write::DeflateDecoder::new(out)),
            Coding::Brotli => Self::Brotli(Box::new(brotli::DecompressorWriter::new(out, 4096))),
            Coding::Zstd => Self::Zstd(zstd::stream::write::Decoder::new(out)?),
        })
    }

    fn write_segment(&mut self, bytes: &[u8]) -> io::Result<()> {
        let writer: &mut dyn Write = match self {
            Self::Gzip(d) => d,
            Self::Zlib(d) => d,
            Self::RawDeflate(d) => d,
            Self::Brotli(d) => d.as_mut(),
            Self::Zstd(d) => d,
        };
        writer.write_all(bytes)?;
        writer.flush()
    }

    /// Checks that the stream ended properly and pushes out what is left.
    fn finish(&mut self) -> io::Result<()> {
        match self {
            Self::Gzip(d) => d.try_finish(),
            Self::Zlib(d) => d.try_finish(),
            Self::RawDeflate(d) => d.try_finish(),
            Self::Brotli(d) => d.close(),
            Self::Zstd(d) => d.do_finish(),
        }
    }

    fn output(&mut self) -> &mut Capped {
        match self {
            Self::Gzip(d) => d.get_mut(),
            Self::Zlib(d) => d.get_mut(),
            Self::RawDeflate(d) => d.get_mut(),
            Self::Brotli(d) => d.get_mut(),
            Self::Zstd(d) => d.get_mut(),
        }
    }

    /// Takes the bytes decoded so far.
    fn take(&mut self) -> Vec<u8> {
        mem::take(&mut self.output().buf)
    }

    fn error(&mut self, coding: Coding, source: io::Error) -> DecodeError {
        if self.output().over {
            DecodeError::TooLarge {
                coding: coding.name(),
                limit: MAX_DECODED_LEN,
            }
        } else {
            corrupt(coding, source)
        }
    }
}

/// RFC 1950: compression method 8, window at most 32 KiB, header checksum.
fn is_zlib_header(head: &[u8]) -> bool {
    match *head {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
        }
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::Compression;

    const TEXT: &[u8] = b"hello hello hello, a body worth compressing, hello hello";

    pub(crate) fn compress(coding: &str, data: &[u8]) -> Vec<u8> {
        match coding {
            "gzip" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "zlib" => {
                let mut e = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "raw" => {
                let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "br" => {
                let mut out = Vec::new();
                {
                    let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                    e.write_all(data).unwrap();
                }
                out
            }
            "zstd" => zstd::encode_all(data, 3).unwrap(),
            other => panic!("no test encoder for {other}"),
        }
    }

    fn joined(segments: &Segments) -> Vec<u8> {
        segments.iter().flat_map(|(_, b)| b.clone()).collect()
    }

    #[test]
    fn every_coding_decodes_to_the_same_bytes() {
        for (header, kind) in [
            ("gzip", "gzip"),
            ("x-gzip", "gzip"),
            ("deflate", "zlib"),
            ("deflate", "raw"),
            ("br", "br"),
            ("zstd", "zstd"),
            ("GZIP", "gzip"),
        ] {
            let wire = compress(kind, TEXT);
            let decoded = decode(Some(header), &[(1.0, wire)]).unwrap().unwrap();
            assert_eq!(joined(&decoded), TEXT, "{header} ({kind})");
        }
    }

    #[test]
    fn split_input_keeps_segment_times() {
        let wire = compress("gzip", TEXT);
        let (a, b) = wire.split_at(wire.len() / 2);
        let decoded = decode(Some("gzip"), &[(1.0, a), (7.5, b)])
            .unwrap()
            .unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!((decoded[0].0, decoded[1].0), (1.0, 7.5));
        assert_eq!(joined(&decoded), TEXT);
    }

    #[test]
    fn stacked_codings_are_undone_right_to_left() {
        let wire = compress("br", &compress("gzip", TEXT));
        let decoded = decode(Some("gzip, br"), &[(0.0, wire)]).unwrap().unwrap();
        assert_eq!(joined(&decoded), TEXT);
    }

    #[test]
    fn unknown_coding_is_reported_as_none() {
        assert!(decode(Some("compress"), &[(0.0, b"x")]).unwrap().is_none());
        assert!(
            decode(Some("gzip, lzma"), &[(0.0, b"x")])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn identity_and_absent_pass_through() {
        for header in [None, Some(""), Some("identity")] {
            let decoded = decode(header, &[(0.0, TEXT)]).unwrap().unwrap();
            assert_eq!(joined(&decoded), TEXT);
        }
        assert_eq!(normalize(Some(" Identity ")), None);
        assert_eq!(normalize(Some(" GZip ")), Some("gzip".to_owned()));
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        for coding in ["gzip", "deflate", "br", "zstd"] {
            let err = decode(Some(coding), &[(0.0, b"definitely not compressed data")]);
            assert!(
                matches!(err, Err(DecodeError::Corrupt { .. })),
                "{coding}: {err:?}"
            );
        }
        let wire = compress("gzip", TEXT);
        let cut = &wire[..wire.len() - 4];
        assert!(decode(Some("gzip"), &[(0.0, cut)]).is_err());
        let wire = compress("zstd", TEXT);
        assert!(decode(Some("zstd"), &[(0.0, &wire[..wire.len() - 3])]).is_err());
    }

    #[test]
    fn empty_body_with_coding_stays_empty() {
        let decoded = decode(Some("gzip"), &[(0.0, b"")]).unwrap().unwrap();
        assert_eq!(joined(&decoded), b"");
    }

    #[test]
    fn decompression_bomb_is_refused() {
        let zeros = vec![0u8; MAX_DECODED_LEN + 1];
        let wire = compress("zstd", &zeros);
        let err = decode(Some("zstd"), &[(0.0, wire)]).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err:?}");
    }
}
