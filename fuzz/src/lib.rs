//! What the fuzz targets share: how one fuzz input is cut into the two directions of a
//! connection, and how a byte stream is cut into chunks, deterministically from the input,
//! so that a crash replays from its saved input alone.
//!
//! Two-sided inputs (HTTP/1.1, HTTP/2) are laid out as `[seed: u8][client_len: u16 LE]`
//! followed by the client's bytes and then the server's; `cargo xtask fuzz --seed` writes
//! recorded traffic in that layout ([`two_sided`]).

#![forbid(unsafe_code)]

/// One connection's traffic taken from a fuzz input.
pub struct TwoSided<'a> {
    /// Drives [`Splitter`]: where chunks are cut.
    pub seed: u8,
    /// What the client wrote (requests).
    pub client: &'a [u8],
    /// What the server answered (responses).
    pub server: &'a [u8],
}

impl<'a> TwoSided<'a> {
    /// Reads the layout described in the crate docs; a short input has empty sides.
    pub fn parse(data: &'a [u8]) -> Self {
        let Some((&[seed, lo, hi], rest)) = data.split_first_chunk::<3>() else {
            return Self {
                seed: data.first().copied().unwrap_or(0),
                client: &[],
                server: &[],
            };
        };
        let client_len = usize::from(u16::from_le_bytes([lo, hi])).min(rest.len());
        let (client, server) = rest.split_at(client_len);
        Self {
            seed,
            client,
            server,
        }
    }
}

/// The input layout [`TwoSided::parse`] reads, for writing seeds.
pub fn two_sided(seed: u8, client: &[u8], server: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(client.len()).ok()?;
    let mut out = vec![seed];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(client);
    out.extend_from_slice(server);
    Some(out)
}

/// Cuts byte streams into chunks of pseudo-random lengths (1 to 64 bytes, sometimes
/// whole), the way reads and writes arrive from the kernel.
pub struct Splitter(u64);

impl Splitter {
    /// A splitter whose cuts follow from `seed`.
    pub fn new(seed: u8) -> Self {
        Self(0x9E37_79B9_7F4A_7C15 ^ u64::from(seed).wrapping_mul(0x0100_0000_01B3))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `bytes` cut into consecutive non-empty chunks.
    pub fn split<'a>(&mut self, bytes: &'a [u8]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = match self.next() % 8 {
                0 => rest.len(),
                _ => usize::try_from(self.next() % 64).unwrap_or(0) + 1,
            };
            let (chunk, tail) = rest.split_at(n.min(rest.len()));
            chunks.push(chunk);
            rest = tail;
        }
        chunks
    }
}

/// Builds a body as capture does, from `bytes` arriving in chunks cut by `seed`, and checks
/// what replay relies on, both for the body as built and for the body after a trip through
/// the snapshot's JSON: without a Content-Encoding, replay sends back exactly the recorded
/// bytes, SSE comments and blocks without data included. Never a panic either way.
pub fn check_body(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    seed: u8,
    bytes: &[u8],
) {
    use llmsim_snapshot::model::Body;

    let segments: Vec<(f64, &[u8])> = Splitter::new(seed)
        .split(bytes)
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| (f64::from(u32::try_from(i).unwrap_or(u32::MAX)), chunk))
        .collect();
    let (body, error) = Body::for_storage(content_type, content_encoding, &segments);
    let stored = serde_json::to_vec(&body).expect("a body always serializes");
    let loaded: Body = serde_json::from_slice(&stored).unwrap_or_else(|e| {
        panic!(
            "stored body does not load back: {e}: {}",
            String::from_utf8_lossy(&stored)
        )
    });
    if content_encoding.is_some() || error.is_some() {
        return;
    }
    assert_eq!(loaded.json(), body.json(), "the stored document loads as another");
    for (what, body) in [("as built", &body), ("after storing", &loaded)] {
        let replayed = body.to_bytes();
        assert!(
            replayed == bytes,
            "replayed bytes {what} differ from the recorded ones: {body:?}"
        );
    }
}
