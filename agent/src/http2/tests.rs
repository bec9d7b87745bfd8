use loona_hpack::Encoder;

use super::*;
use crate::http1::Exchange;
use Direction::{Read, Write};

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn block(encoder: &mut Encoder<'_>, fields: &[(&str, &str)]) -> Vec<u8> {
    encoder.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
}

/// Both directions of one connection, encoded as a client and a server would.
struct Peers {
    client: Encoder<'static>,
    server: Encoder<'static>,
}

impl Peers {
    fn new() -> Self {
        Self {
            client: Encoder::new(),
            server: Encoder::new(),
        }
    }

    fn request(&mut self, stream: u32, path: &str, end: bool) -> Vec<u8> {
        let fields = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "api.openai.com"),
            (":path", path),
            ("authorization", "Bearer sk-test"),
            ("content-type", "application/json"),
            ("x-stainless-lang", "python"),
        ];
        let flags = END_HEADERS | if end { END_STREAM } else { 0 };
        frame(HEADERS, flags, stream, &block(&mut self.client, &fields))
    }

    fn response(&mut self, stream: u32, status: &str, end: bool) -> Vec<u8> {
        let fields = [
            (":status", status),
            ("content-type", "text/event-stream"),
            ("x-request-id", "req-1"),
        ];
        let flags = END_HEADERS | if end { END_STREAM } else { 0 };
        frame(HEADERS, flags, stream, &block(&mut self.server, &fields))
    }
}

fn client_start() -> Vec<u8> {
    [PREFACE, &frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])].concat()
}

fn assert_empty<T: std::fmt::Debug>(items: &[T]) {
    assert_eq!(items.len(), 0, "expected nothing, got {items:#?}");
}

fn push(conn: &mut Http2Connection, dir: Direction, ts: u64, bytes: &[u8]) -> Vec<Exchange> {
    conn.push(dir, ts, bytes)
        .unwrap_or_else(|e| panic!("push failed: {e}"))
}

/// One request with a body and a streamed response, as (direction, bytes) calls.
fn transcript() -> Vec<(Direction, Vec<u8>)> {
    let mut peers = Peers::new();
    vec![
        (
            Write,
            [
                client_start(),
                peers.request(1, "/v1/chat/completions", false),
                frame(DATA, 0, 1, b"{\"a\":"),
                frame(DATA, END_STREAM, 1, b"1}"),
            ]
            .concat(),
        ),
        (
            Read,
            [
                frame(SETTINGS, 0, 0, &[]),
                frame(SETTINGS, 0x1, 0, &[]),
                peers.response(1, "200", false),
            ]
            .concat(),
        ),
        (Read, frame(DATA, 0, 1, b"data: {\"x\":1}\n\n")),
        (
            Read,
            [
                frame(DATA, 0, 1, b"data: [DONE]\n\n"),
                frame(DATA, END_STREAM, 1, b""),
            ]
            .concat(),
        ),
    ]
}

fn check_transcript_exchange(out: &[Exchange]) {
    assert_eq!(out.len(), 1, "{out:?}");
    let ex = &out[0];
    assert!(ex.incomplete.is_none(), "{ex:?}");
    assert_eq!(ex.request.method, "POST");
    assert_eq!(ex.request.target, "/v1/chat/completions");
    assert_eq!(
        ex.request.header(":authority"),
        Some(&b"api.openai.com"[..])
    );
    assert_eq!(
        ex.request.header("authorization"),
        Some(&b"Bearer sk-test"[..])
    );
    assert_eq!(ex.request.header(":method"), None);
    assert_eq!(ex.request.body, b"{\"a\":1}");
    let r = ex.response.as_ref().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(&b"text/event-stream"[..]));
    assert_eq!(r.header(":status"), None);
    assert_eq!(r.body(), b"data: {\"x\":1}\n\ndata: [DONE]\n\n");
}

#[test]
fn a_stream_becomes_an_exchange() {
    let mut conn = Http2Connection::new();
    let mut out = Vec::new();
    for (i, (dir, bytes)) in transcript().into_iter().enumerate() {
        out.extend(push(&mut conn, dir, 10 + u64::try_from(i).unwrap(), &bytes));
    }
    check_transcript_exchange(&out);
    // One body segment per read, with that read's time.
    let segments = &out[0].response.as_ref().unwrap().body_segments;
    assert_eq!(
        segments,
        &vec![
            (12, b"data: {\"x\":1}\n\n".to_vec()),
            (13, b"data: [DONE]\n\n".to_vec())
        ]
    );
    assert_eq!(out[0].request.start_ns, 10);
    assert_eq!(out[0].response.as_ref().unwrap().first_byte_ns, 11);
    assert_empty(&conn.finish());
}

#[test]
fn frames_split_anywhere_or_merged_decode_the_same() {
    let steps = transcript();
    for piece in [1, 2, 5, 9, 10, 64, usize::MAX] {
        let mut conn = Http2Connection::new();
        let mut out = Vec::new();
        for (dir, bytes) in &steps {
            for chunk in bytes.chunks(piece.min(bytes.len())) {
                out.extend(push(&mut conn, *dir, 1, chunk));
            }
        }
        check_transcript_exchange(&out);
    }
    // Every write in one call, then every read in one call.
    let mut conn = Http2Connection::new();
    let writes: Vec<u8> = steps
        .iter()
        .filter(|s| s.0 == Write)
        .flat_map(|s| s.1.clone())
        .collect();
    let reads: Vec<u8> = steps
        .iter()
        .filter(|s| s.0 == Read)
        .flat_map(|s| s.1.clone())
        .collect();
    assert_empty(&push(&mut conn, Write, 1, &writes));
    check_transcript_exchange(&push(&mut conn, Read, 2, &reads));
}

#[test]
fn continuation_padding_and_priority_are_handled() {
    let mut enc = Encoder::new();
    let fields = block(
        &mut enc,
        &[
            (":method", "GET"),
            (":path", "/v1/models"),
            (":authority", "api.openai.com"),
            ("x-long", &"v".repeat(300)),
        ],
    );
    let (first, rest) = fields.split_at(10);
    let (second, third) = rest.split_at(100);
    // HEADERS with padding and priority fields, then two CONTINUATIONs.
    let mut payload = vec![3u8];
    payload.extend_from_slice(&[0x80, 0, 0, 1, 16]);
    payload.extend_from_slice(first);
    payload.extend_from_slice(&[0, 0, 0]);
    let request = [
        client_start(),
        frame(HEADERS, PADDED | PRIORITY_FLAG | END_STREAM, 1, &payload),
        frame(CONTINUATION, 0, 1, second),
        frame(CONTINUATION, END_HEADERS, 1, third),
    ]
    .concat();
    let mut server = Encoder::new();
    let mut data = vec![5u8];
    data.extend_from_slice(b"{\"data\":[]}");
    data.extend_from_slice(&[0; 5]);
    let response = [
        frame(
            HEADERS,
            END_HEADERS,
            1,
            &block(&mut server, &[(":status", "200")]),
        ),
        frame(DATA, PADDED | END_STREAM, 1, &data),
    ]
    .concat();
    let mut conn = Http2Connection::new();
    assert_empty(&push(&mut conn, Write, 1, &request));
    let out = push(&mut conn, Read, 2, &response);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/v1/models");
    assert_eq!(out[0].request.header("x-long").unwrap().len(), 300);
    assert_eq!(out[0].response.as_ref().unwrap().body(), b"{\"data\":[]}");
}

#[test]
fn trailers_interim_responses_and_control_frames() {
    let mut peers = Peers::new();
    let request = [
        client_start(),
        peers.request(1, "/helloworld.Greeter/SayHello", false),
        frame(DATA, END_STREAM, 1, b"\0\0\0\0\x02hi"),
        frame(PING, 0, 0, &[1; 8]),
        frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]),
        frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 16]),
        frame(0xfa, 0, 0, b"extension frames are ignored"),
    ]
    .concat();
    let interim = frame(
        HEADERS,
        END_HEADERS,
        1,
        &block(&mut peers.server, &[(":status", "103"), ("link", "</x>")]),
    );
    let response = [
        interim,
        peers.response(1, "200", false),
        frame(DATA, 0, 1, b"\0\0\0\0\x03hey"),
        frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &block(
                &mut peers.server,
                &[("grpc-status", "0"), ("grpc-message", "")],
            ),
        ),
        frame(PING, 0x1, 0, &[1; 8]),
    ]
    .concat();
    let mut conn = Http2Connection::new();
    assert_empty(&push(&mut conn, Write, 1, &request));
    let out = push(&mut conn, Read, 2, &response);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].incomplete.is_none());
    let r = out[0].response.as_ref().unwrap();
    assert_eq!(r.interim, vec![103]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.trailers,
        vec![
            ("grpc-status".to_owned(), b"0".to_vec()),
            ("grpc-message".to_owned(), Vec::new())
        ]
    );
    assert_eq!(r.body(), b"\0\0\0\0\x03hey");
}

#[test]
fn concurrent_streams_come_out_in_start_order() {
    let mut peers = Peers::new();
    let mut conn = Http2Connection::new();
    let mut writes = client_start();
    for id in [1, 3, 5] {
        writes.extend(peers.request(id, &format!("/v1/s{id}"), true));
    }
    assert_empty(&push(&mut conn, Write, 1, &writes));
    // Stream 5 then 3 finish first: nothing comes out until 1 does.
    for id in [5, 3] {
        let bytes = [
            peers.response(id, "200", false),
            frame(DATA, END_STREAM, id, format!("body {id}").as_bytes()),
        ]
        .concat();
        assert_empty(&push(&mut conn, Read, 2, &bytes));
    }
    let bytes = [
        peers.response(1, "200", false),
        frame(DATA, END_STREAM, 1, b"body 1"),
    ]
    .concat();
    let out = push(&mut conn, Read, 3, &bytes);
    let targets: Vec<_> = out.iter().map(|e| e.request.target.as_str()).collect();
    assert_eq!(targets, ["/v1/s1", "/v1/s3", "/v1/s5"]);
    for (e, id) in out.iter().zip([1, 3, 5]) {
        assert_eq!(
            e.response.as_ref().unwrap().body(),
            format!("body {id}").as_bytes()
        );
    }
}

#[test]
fn resets_and_goaway_flag_their_streams() {
    let mut peers = Peers::new();
    let mut conn = Http2Connection::new();
    let mut writes = client_start();
    for id in [1, 3, 5] {
        writes.extend(peers.request(id, "/v1/x", true));
    }
    push(&mut conn, Write, 1, &writes);
    let reads = [
        peers.response(1, "200", false),
        frame(RST_STREAM, 0, 1, &2u32.to_be_bytes()),
        frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]),
        peers.response(3, "200", true),
        // Frames for a stream that ended are passed over.
        frame(DATA, 0, 1, b"late"),
    ]
    .concat();
    let out = push(&mut conn, Read, 2, &reads);
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(
        out[0].incomplete.as_deref(),
        Some("the server reset the stream (error code 2)")
    );
    assert!(out[1].incomplete.is_none());
    assert_eq!(
        out[2].incomplete.as_deref(),
        Some("the server closed the connection (GOAWAY) before processing this stream")
    );
}

#[test]
fn pushed_streams_are_not_recorded_but_keep_the_table_in_step() {
    let mut peers = Peers::new();
    let mut conn = Http2Connection::new();
    push(
        &mut conn,
        Write,
        1,
        &[client_start(), peers.request(1, "/v1/x", true)].concat(),
    );
    // The promise adds `x-pushed: yes` to the server's table; the response refers to it.
    let mut promise = 2u32.to_be_bytes().to_vec();
    promise.extend(block(
        &mut peers.server,
        &[(":method", "GET"), (":path", "/p"), ("x-pushed", "yes")],
    ));
    let reads = [
        frame(PUSH_PROMISE, END_HEADERS, 1, &promise),
        frame(
            HEADERS,
            END_HEADERS,
            2,
            &block(
                &mut peers.server,
                &[(":status", "200"), ("x-pushed", "yes")],
            ),
        ),
        frame(DATA, END_STREAM, 2, b"pushed"),
        frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &block(
                &mut peers.server,
                &[(":status", "204"), ("x-pushed", "yes")],
            ),
        ),
    ]
    .concat();
    let out = push(&mut conn, Read, 2, &reads);
    assert_eq!(out.len(), 1);
    let r = out[0].response.as_ref().unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("x-pushed"), Some(&b"yes"[..]));
}

#[test]
fn hpack_huffman_never_indexed_and_table_size_updates_decode() {
    // RFC 7541 C.4: three requests with Huffman-coded literals sharing a dynamic table.
    let hex = |s: &str| -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let blocks = [
        hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
        hex("8286 84be 5886 a8eb 1064 9cbf"),
        hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
    ];
    // A never-indexed literal (RFC 7541 C.2.3) after a table size update to 256.
    let never = [
        &[0x3f, 0xe1, 0x01][..],
        &hex("1008 7061 7373 776f 7264 0673 6563 7265 74"),
    ]
    .concat();
    let mut writes = [PREFACE, &frame(SETTINGS, 0, 0, &[])].concat();
    for (i, b) in blocks.iter().chain([&never]).enumerate() {
        writes.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            2 * u32::try_from(i).unwrap() + 1,
            b,
        ));
    }
    let mut conn = Http2Connection::new();
    // The server allows the client's encoder 256 bytes of table.
    push(
        &mut conn,
        Read,
        1,
        &frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 1, 0]),
    );
    push(&mut conn, Write, 2, &writes);
    let out = conn.finish();
    assert_eq!(out.len(), 4);
    assert_eq!(
        out[0].request.header(":authority"),
        Some(&b"www.example.com"[..])
    );
    assert_eq!(
        out[1].request.header("cache-control"),
        Some(&b"no-cache"[..])
    );
    assert_eq!(
        out[1].request.header(":authority"),
        Some(&b"www.example.com"[..])
    );
    assert_eq!(out[2].request.target, "/index.html");
    assert_eq!(
        out[2].request.header("custom-key"),
        Some(&b"custom-value"[..])
    );
    assert_eq!(out[3].request.header("password"), Some(&b"secret"[..]));
    assert!(
        out.iter()
            .all(|e| e.incomplete.as_deref() == Some("connection ended before the response"))
    );

    // A size update beyond what the server allowed is a HPACK error.
    let mut conn = Http2Connection::new();
    push(
        &mut conn,
        Read,
        1,
        &frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0, 100]),
    );
    let err = conn
        .push(
            Write,
            2,
            &[client_start(), frame(HEADERS, END_HEADERS, 1, &never)].concat(),
        )
        .unwrap_err();
    assert!(matches!(err, Http2Error::Hpack { .. }), "{err:?}");
}

#[test]
fn a_connection_joined_midway_never_writes_a_field_it_cannot_know() {
    let mut peers = Peers::new();
    // Before the capture: one exchange fills both tables.
    peers.request(1, "/v1/chat/completions", true);
    peers.response(1, "200", true);
    // After it: the same fields again, now mostly references to those entries, plus a
    // new header sent twice.
    let mut fields = vec![
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "api.openai.com"),
        (":path", "/v1/chat/completions"),
        ("authorization", "Bearer sk-test"),
        ("content-type", "application/json"),
        ("x-stainless-lang", "python"),
        ("x-new", "1"),
    ];
    let first = frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &block(&mut peers.client, &fields),
    );
    fields.push(("content-length", "0"));
    let second = frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        5,
        &block(&mut peers.client, &fields),
    );
    let mut conn = Http2Connection::joined();
    let mut writes = first.clone();
    writes.extend(&second);
    assert!(could_start_frame(&writes));
    push(&mut conn, Write, 1, &writes);
    let reads = [
        // A frame of a stream from before the capture is passed over.
        frame(DATA, END_STREAM, 1, b"old"),
        peers.response(3, "200", true),
        peers.response(5, "404", true),
    ]
    .concat();
    let out = push(&mut conn, Read, 2, &reads);
    assert_eq!(out.len(), 2, "{out:?}");
    for ex in &out {
        // Static-table and literal fields are known; fields that refer to entries
        // from before are left out, and the exchange says so.
        assert_eq!(ex.request.method, "POST");
        assert_eq!(ex.request.target, "/v1/chat/completions");
        assert_eq!(ex.request.header(":scheme"), Some(&b"https"[..]));
        assert_eq!(
            ex.request.header("authorization"),
            Some(&b"Bearer sk-test"[..])
        );
        assert_eq!(ex.request.header("x-stainless-lang"), None);
        let response = ex.response.as_ref().unwrap();
        assert_eq!(
            response.header("content-type"),
            Some(&b"text/event-stream"[..])
        );
        assert_eq!(response.header("x-request-id"), None);
        let why = ex.incomplete.as_deref().unwrap();
        assert!(
            why.contains(
                "request header field(s) refer to HPACK table entries from before the capture began"
            ),
            "{why}"
        );
    }
    assert_eq!(out[0].request.header("x-new"), Some(&b"1"[..]));
    // x-new was added after the capture began, but the table lost step at the first
    // unknown reference, so its second use is left out too rather than guessed.
    assert_eq!(out[1].request.header("x-new"), None);
    assert_eq!(out[1].request.header("content-length"), Some(&b"0"[..]));
    assert_eq!(out[0].response.as_ref().unwrap().status, 200);
    assert_eq!(out[1].response.as_ref().unwrap().status, 404);
    assert_eq!(conn.withheld_exchanges(), 2);
}

#[test]
fn bad_input_is_an_error_and_stops_the_connection() {
    let mut peers = Peers::new();
    let open = [client_start(), peers.request(1, "/v1/x", true)].concat();
    let cases: Vec<(Direction, Vec<u8>, &str)> = vec![
        (
            Write,
            frame(PING, 0, 0, &[0; 7]),
            "malformed HTTP/2 PING frame",
        ),
        (Write, frame(DATA, 0, 0, b"x"), "it names stream 0"),
        (
            Write,
            frame(CONTINUATION, END_HEADERS, 1, b""),
            "no header block is open",
        ),
        (
            Write,
            [frame(HEADERS, 0, 3, b""), frame(DATA, 0, 3, b"")].concat(),
            "still open",
        ),
        (
            Write,
            frame(HEADERS, END_HEADERS, 3, &[0xff, 0x80, 0x01]),
            "HPACK error",
        ),
        (
            Write,
            frame(DATA, PADDED, 1, &[9, 1, 2]),
            "padding is longer",
        ),
        (Read, frame(DATA, 0, 7, b"x"), "unknown stream 7"),
        (Read, frame(DATA, 0, 1, b"x"), "HEADERS did not come first"),
        (
            Read,
            frame(HEADERS, END_HEADERS, 1, &[0x40, 1, b'a', 1, b'b']),
            "no valid :status",
        ),
        (
            Write,
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            "larger than the receiver's maximum frame size",
        ),
        (
            Read,
            b"HTTP/1.0 505 Version Not Supported\r\n".to_vec(),
            "larger than the receiver's maximum frame size",
        ),
    ];
    for (dir, bytes, message) in cases {
        let mut conn = Http2Connection::new();
        push(&mut conn, Write, 1, &open);
        let err = conn.push(dir, 2, &bytes).unwrap_err();
        assert!(err.to_string().contains(message), "{err} / {message}");
        // Later bytes are ignored, the stream in flight comes out flagged.
        assert_empty(&conn.push(Read, 3, &peers.response(1, "200", true)).unwrap());
        let out = conn.finish();
        assert_eq!(out.len(), 1);
        assert!(
            out[0]
                .incomplete
                .as_deref()
                .unwrap()
                .starts_with("decoding stopped: ")
        );
    }
    // A header block over the limit, in CONTINUATIONs.
    let mut conn = Http2Connection::new();
    let mut bytes = [client_start(), frame(HEADERS, 0, 1, &[0; 16_000])].concat();
    let mut err = None;
    for _ in 0..100 {
        bytes.extend(frame(CONTINUATION, 0, 1, &[0; 16_000]));
        if let Err(e) = conn.push(Write, 1, &std::mem::take(&mut bytes)) {
            err = Some(e);
            break;
        }
    }
    assert!(
        matches!(err, Some(Http2Error::HeaderBlockTooLarge { .. })),
        "{err:?}"
    );
    // Not the preface.
    let mut conn = Http2Connection::new();
    assert!(matches!(
        conn.push(Write, 1, b"PRI * HTTP/1.1"),
        Err(Http2Error::BadPreface)
    ));
}

#[test]
fn lost_bytes_flag_every_stream_in_flight() {
    let mut peers = Peers::new();
    let mut conn = Http2Connection::new();
    push(
        &mut conn,
        Write,
        1,
        &[
            client_start(),
            peers.request(1, "/a", true),
            peers.request(3, "/b", true),
        ]
        .concat(),
    );
    let out = conn.mark_lost(Read, "gone");
    assert_eq!(out.len(), 2);
    assert!(
        out.iter()
            .all(|e| e.incomplete.as_deref() == Some("response bytes lost: gone"))
    );
    assert_empty(&push(&mut conn, Read, 2, &peers.response(1, "200", true)));
}

#[test]
fn recognition_of_the_preface_and_of_frames() {
    assert!(starts_with_preface(b"PRI * HT"));
    assert!(starts_with_preface(&client_start()));
    assert!(!starts_with_preface(b"POST / HTTP/1.1\r\n"));
    assert!(!starts_with_preface(b""));
    assert!(could_start_frame(&frame(SETTINGS, 0, 0, &[])));
    assert!(could_start_frame(&frame(HEADERS, END_HEADERS, 5, b"\x82")));
    for text in [
        &b"HTTP/1.1 200 OK\r\n"[..],
        b"POST /v1 HTTP/1.1\r\n",
        b"data: {\"x\":1}\n\n",
        b"127\r\ndata",
    ] {
        assert!(!could_start_frame(text));
    }
    assert!(!could_start_frame(&frame(SETTINGS, 0, 3, &[])));
    assert!(!could_start_frame(&frame(0x30, 0, 0, &[])));
}

#[test]
fn streams_begun_before_a_join_are_passed_over_and_counted() {
    let mut peers = Peers::new();
    let mut conn = Http2Connection::joined();
    // Stream 1 began before the capture: the rest of its request body, a window update.
    push(
        &mut conn,
        Write,
        1,
        &[
            frame(DATA, END_STREAM, 1, b"{}"),
            frame(WINDOW_UPDATE, 0, 1, &[0, 0, 1, 0]),
        ]
        .concat(),
    );
    assert_eq!(conn.streams_before_join(), 1);
    // Stream 5 is the first to start after it; 3 had begun before, and is reset.
    push(
        &mut conn,
        Write,
        2,
        &peers.request(5, "/v1/chat/completions", true),
    );
    let reads = [
        peers.response(1, "200", false),
        frame(DATA, END_STREAM, 1, b"old"),
        frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]),
        peers.response(5, "200", false),
        frame(DATA, END_STREAM, 5, b"new"),
        frame(DATA, 0, 3, b"late"),
    ]
    .concat();
    let out = push(&mut conn, Read, 3, &reads);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].response.as_ref().unwrap().body(), b"new");
    assert_eq!(conn.streams_before_join(), 2, "streams 1 and 3, each once");
    assert_empty(&conn.finish());
    assert_eq!(conn.streams_before_join(), 2);

    // A connection seen from its start has none, whatever it passes over.
    let mut peers = Peers::new();
    let mut conn = Http2Connection::new();
    push(
        &mut conn,
        Write,
        1,
        &[client_start(), peers.request(1, "/v1/models", true)].concat(),
    );
    let out = push(
        &mut conn,
        Read,
        2,
        &[peers.response(1, "200", true), frame(DATA, 0, 2, b"pushed")].concat(),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(conn.streams_before_join(), 0);
}

#[test]
fn mutated_and_random_input_never_panics() {
    let steps = transcript();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |below: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        usize::try_from(seed % u64::try_from(below.max(1)).unwrap()).unwrap()
    };
    for _ in 0..2000 {
        let mut conn = if next(4) == 0 {
            Http2Connection::joined()
        } else {
            Http2Connection::new()
        };
        for (dir, bytes) in &steps {
            let mut bytes = bytes.clone();
            for _ in 0..next(4) {
                let at = next(bytes.len());
                bytes[at] = u8::try_from(next(256)).unwrap();
            }
            let cut = next(bytes.len() + 1);
            for piece in [&bytes[..cut], &bytes[cut..]] {
                if next(50) == 0 {
                    let _ = conn.mark_lost(*dir, "fuzz");
                }
                let _ = conn.push(*dir, 1, piece);
            }
        }
        let _ = conn.finish();
    }
}
