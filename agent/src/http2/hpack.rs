//! Header block decoding (RFC 7541) through `loona-hpack`, one decoder per direction,
//! and what is left of a block when the capture began after the connection did: the
//! fields that do not depend on dynamic-table entries from before it.

use std::borrow::Cow;

use loona_hpack::decoder::DecoderError;

use super::Headers;

/// Entries of the static table (RFC 7541 appendix A); higher indices are dynamic.
const STATIC_ENTRIES: usize = 61;

/// What the decoder knows of the dynamic table its peer's encoder keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TableState {
    /// Every entry: the connection was seen from its preface.
    Known,
    /// The capture began mid-connection: the table holds the entries added since,
    /// which are the newest of the real table; an index past them fails to decode.
    Newest,
    /// A block referred to entries from before the capture: the table lost step with the
    /// encoder's for good, and only fields that need no dynamic entry are decoded.
    Lost,
}

/// A decoded header block.
#[derive(Debug, Default)]
pub(super) struct Block {
    /// The fields that could be decoded, in order.
    pub fields: Headers,
    /// How many fields were left out because they refer to dynamic-table entries from
    /// before the capture began.
    pub withheld: usize,
}

/// Decodes the header blocks one direction carries.
pub(super) struct HeaderDecoder {
    decoder: loona_hpack::Decoder<'static>,
    state: TableState,
}

impl std::fmt::Debug for HeaderDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDecoder")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl HeaderDecoder {
    /// A decoder for a connection seen from its start, or (`joined`) from its middle.
    pub fn new(joined: bool) -> Self {
        Self {
            decoder: loona_hpack::Decoder::new(),
            state: if joined {
                TableState::Newest
            } else {
                TableState::Known
            },
        }
    }

    /// The peer's `SETTINGS_HEADER_TABLE_SIZE`: the most a table size update may ask for.
    pub fn set_max_table_size(&mut self, size: u32) {
        self.decoder
            .set_max_allowed_table_size(usize::try_from(size).unwrap_or(usize::MAX));
    }

    /// Decodes the next block (HEADERS or `PUSH_PROMISE` with its CONTINUATIONs).
    pub fn decode(&mut self, block: &[u8]) -> Result<Block, DecoderError> {
        if self.state != TableState::Lost {
            let mut fields = Headers::new();
            match self.decoder.decode_with_cb(block, |name, value| {
                fields.push((
                    String::from_utf8_lossy(&name).into_owned(),
                    value.into_owned(),
                ));
            }) {
                Ok(()) => {
                    return Ok(Block {
                        fields,
                        withheld: 0,
                    });
                }
                Err(DecoderError::HeaderIndexOutOfBounds) if self.state == TableState::Newest => {
                    self.state = TableState::Lost;
                }
                Err(error) => return Err(error),
            }
        }
        without_dynamic_entries(block)
    }
}

/// The fields of `block` that need no dynamic-table entry, each decoded alone by a
/// decoder with an empty table; the others are counted as withheld.
fn without_dynamic_entries(block: &[u8]) -> Result<Block, DecoderError> {
    let mut out = Block::default();
    let mut at = 0;
    while let Some(rest) = block.get(at..).filter(|r| !r.is_empty()) {
        let (len, index) = representation(rest)?;
        let field = rest.get(..len).unwrap_or_default();
        at += len;
        match index {
            Index::SizeUpdate => {}
            Index::Entry(i) if i > STATIC_ENTRIES => out.withheld += 1,
            Index::Entry(_) | Index::Literal => {
                loona_hpack::Decoder::new().decode_with_cb(field, |name: Cow<[u8]>, value| {
                    out.fields.push((
                        String::from_utf8_lossy(&name).into_owned(),
                        value.into_owned(),
                    ));
                })?;
            }
        }
    }
    Ok(out)
}

/// What a field representation refers to.
enum Index {
    /// A table entry (an indexed field, or a literal's indexed name).
    Entry(usize),
    /// Nothing: a literal with a literal name.
    Literal,
    /// A dynamic table size update, which carries no field.
    SizeUpdate,
}

/// The length of the representation at the start of `bytes` and the table index it uses
/// (RFC 7541 section 6).
fn representation(bytes: &[u8]) -> Result<(usize, Index), DecoderError> {
    let first = bytes.first().copied().unwrap_or_default();
    let prefix = match first {
        0x80.. => {
            let (index, len) = integer(bytes, 7)?;
            return Ok((len, Index::Entry(index)));
        }
        0x40..=0x7f => 6,
        0x20..=0x3f => {
            let (_, len) = integer(bytes, 5)?;
            return Ok((len, Index::SizeUpdate));
        }
        _ => 4,
    };
    let (index, mut len) = integer(bytes, prefix)?;
    if index == 0 {
        len += string_len(bytes.get(len..).unwrap_or_default())?;
    }
    len += string_len(bytes.get(len..).unwrap_or_default())?;
    let index = if index == 0 {
        Index::Literal
    } else {
        Index::Entry(index)
    };
    Ok((len, index))
}

/// An integer with a `prefix`-bit prefix (RFC 7541 section 5.1) and its length.
fn integer(bytes: &[u8], prefix: u32) -> Result<(usize, usize), DecoderError> {
    use loona_hpack::decoder::IntegerDecodingError as E;
    let max = (1usize << prefix) - 1;
    let first = usize::from(
        *bytes
            .first()
            .ok_or(DecoderError::IntegerDecodingError(E::NotEnoughOctets))?,
    );
    let mut value = first & max;
    if value < max {
        return Ok((value, 1));
    }
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        // Four continuation bytes hold 28 bits, more than any real header block needs.
        if i > 4 {
            return Err(DecoderError::IntegerDecodingError(E::TooManyOctets));
        }
        value += usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(DecoderError::IntegerDecodingError(E::NotEnoughOctets))
}

/// The length of the string literal (length prefix and octets) at the start of `bytes`.
fn string_len(bytes: &[u8]) -> Result<usize, DecoderError> {
    let (len, prefix) = integer(bytes, 7)?;
    let end = prefix.saturating_add(len);
    if end > bytes.len() {
        return Err(DecoderError::StringDecodingError(
            loona_hpack::decoder::StringDecodingError::NotEnoughOctets,
        ));
    }
    Ok(end)
}
