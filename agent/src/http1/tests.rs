//! Unit tests for HTTP/1.x reassembly: framing rules, pairing, gaps, errors, and
//! split-invariance (the same bytes cut anywhere give the same exchanges).

use super::*;

use Direction::{Read, Write};

/// Feeds one chunk, panicking with context on error.
fn push(conn: &mut Http1Connection, dir: Direction, ts: u64, bytes: &[u8]) -> Vec<Exchange> {
    conn.push(dir, ts, bytes)
        .unwrap_or_else(|e| panic!("push {dir:?} at ts {ts} failed: {e:#?}"))
}

fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: api.example.com\r\n\r\n").into_bytes()
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Asserts that nothing came out, showing what did otherwise.
#[track_caller]
fn assert_empty<T: std::fmt::Debug>(items: &[T]) {
    assert_eq!(items.len(), 0, "expected nothing, got {items:#?}");
}

/// Same exchanges with timing erased and body segments merged, for comparing feeds that
/// cut the same bytes differently.
fn normalized(exchanges: Vec<Exchange>) -> Vec<Exchange> {
    exchanges
        .into_iter()
        .map(|mut ex| {
            ex.request.start_ns = 0;
            ex.request.end_ns = 0;
            if let Some(r) = ex.response.as_mut() {
                let body = r.body();
                r.body_segments = if body.is_empty() {
                    vec![]
                } else {
                    vec![(0, body)]
                };
                r.first_byte_ns = 0;
                r.end_ns = 0;
            }
            ex
        })
        .collect()
}

/// Small deterministic generator so random splits need no extra crate.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % u64::try_from(n).unwrap()).unwrap()
    }
}

/// Feeds a transcript, cutting each step's bytes at the offsets `cut` returns, then
/// finishes the connection. Returns every exchange emitted.
fn feed(steps: &[(Direction, Vec<u8>)], mut cut: impl FnMut(&[u8]) -> Vec<usize>) -> Vec<Exchange> {
    let mut conn = Http1Connection::new();
    let mut out = Vec::new();
    let mut ts = 0;
    for (dir, bytes) in steps {
        let mut start = 0;
        let mut cuts = cut(bytes);
        cuts.push(bytes.len());
        for end in cuts {
            ts += 1;
            out.extend(push(&mut conn, *dir, ts, &bytes[start..end]));
            start = end;
        }
    }
    out.extend(conn.finish(ts + 1));
    out
}

/// A conversation exercising most framing rules on one keep-alive connection.
fn transcript() -> Vec<(Direction, Vec<u8>)> {
    vec![
        // 100-continue with a chunked request body carrying extensions and trailers.
        (
            Write,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.example.com\r\n\
              Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
        ),
        (Read, b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
        (
            Write,
            b"5;name=value\r\nhello\r\n7 ; a=\"b;c\"\r\n, world\r\n0\r\nX-Req-Trailer: t1\r\n\r\n"
                .to_vec(),
        ),
        (
            Read,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n\
              f;ext\r\ndata: {\"a\":1}\n\n\r\n10\r\ndata: {\"b\":22}\n\n\r\n0\r\nX-Trailer: done\r\n\r\n"
                .to_vec(),
        ),
        // Plain keep-alive GET.
        (Write, get("/v1/models")),
        (Read, ok("{\"data\":[]}")),
        // HEAD: Content-Length describes a body that is not sent.
        (Write, b"HEAD /v1/models HTTP/1.1\r\nHost: h\r\n\r\n".to_vec()),
        (Read, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec()),
        // 204 and 304 have no body whatever their headers say.
        (Write, b"DELETE /v1/files/1 HTTP/1.1\r\nHost: h\r\n\r\n".to_vec()),
        (Read, b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
        (Write, get("/cached")),
        (Read, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nETag: \"x\"\r\n\r\n".to_vec()),
        // Pipelined: two requests in one write, both responses in one read.
        (Write, [get("/p1"), b"POST /p2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec()].concat()),
        (Read, [ok("one"), ok("two!")].concat()),
        // Finally a close-delimited response.
        (Write, get("/stream")),
        (Read, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end".to_vec()),
    ]
}

fn check_transcript(exchanges: &[Exchange]) {
    let summary: Vec<(&str, &str, u16)> = exchanges
        .iter()
        .map(|e| {
            let status = e.response.as_ref().map_or(0, |r| r.status);
            (e.request.method.as_str(), e.request.target.as_str(), status)
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("POST", "/v1/chat/completions", 200),
            ("GET", "/v1/models", 200),
            ("HEAD", "/v1/models", 200),
            ("DELETE", "/v1/files/1", 204),
            ("GET", "/cached", 304),
            ("GET", "/p1", 200),
            ("POST", "/p2", 200),
            ("GET", "/stream", 200),
        ]
    );
    assert!(
        exchanges.iter().all(|e| e.incomplete.is_none()),
        "{exchanges:#?}"
    );
    let bodies: Vec<Vec<u8>> = exchanges
        .iter()
        .map(|e| e.response.as_ref().map(Response::body).unwrap_or_default())
        .collect();
    assert_eq!(bodies[0], b"data: {\"a\":1}\n\ndata: {\"b\":22}\n\n");
    assert_eq!(bodies[1], b"{\"data\":[]}");
    assert!(bodies[2].is_empty() && bodies[3].is_empty() && bodies[4].is_empty());
    assert_eq!(bodies[5], b"one");
    assert_eq!(bodies[6], b"two!");
    assert_eq!(bodies[7], b"until the end");

    let post = &exchanges[0];
    assert_eq!(post.request.body, b"hello, world");
    assert_eq!(
        post.request.trailers,
        vec![("X-Req-Trailer".to_owned(), b"t1".to_vec())]
    );
    let response = post.response.as_ref().unwrap();
    assert_eq!(response.interim, [100]);
    assert_eq!(
        response.trailers,
        vec![("X-Trailer".to_owned(), b"done".to_vec())]
    );
    assert_eq!(exchanges[6].request.body, b"abc");
}

#[test]
fn transcript_in_whole_chunks() {
    let exchanges = feed(&transcript(), |_| vec![]);
    check_transcript(&exchanges);
}

#[test]
fn transcript_one_byte_at_a_time() {
    let whole = normalized(feed(&transcript(), |_| vec![]));
    let bytewise = feed(&transcript(), |b| (1..b.len()).collect());
    check_transcript(&bytewise);
    assert_eq!(normalized(bytewise), whole);
}

#[test]
fn transcript_split_at_every_offset() {
    let steps = transcript();
    let whole = normalized(feed(&steps, |_| vec![]));
    let longest = steps.iter().map(|(_, b)| b.len()).max().unwrap();
    for at in 0..=longest {
        let split = feed(&steps, |b| vec![at.min(b.len())]);
        assert_eq!(normalized(split), whole, "split at {at}");
    }
}

#[test]
fn transcript_random_splits() {
    let steps = transcript();
    let whole = normalized(feed(&steps, |_| vec![]));
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..200 {
        let split = feed(&steps, |b| {
            let mut cuts: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(b.len() + 1)).collect();
            cuts.sort_unstable();
            cuts
        });
        assert_eq!(normalized(split), whole, "round {round}");
    }
}

#[test]
fn keep_alive_emits_each_exchange_when_its_response_ends() {
    let mut conn = Http1Connection::new();
    for i in 0..3_u64 {
        let base = i * 100;
        assert_empty(&push(&mut conn, Write, base + 1, &get(&format!("/n{i}"))));
        assert_empty(&push(
            &mut conn,
            Read,
            base + 2,
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab",
        ));
        let done = push(&mut conn, Read, base + 3, b"cd");
        assert_eq!(done.len(), 1);
        let ex = &done[0];
        assert_eq!(ex.request.target, format!("/n{i}"));
        assert_eq!(
            (ex.request.start_ns, ex.request.end_ns),
            (base + 1, base + 1)
        );
        let r = ex.response.as_ref().unwrap();
        assert_eq!((r.first_byte_ns, r.end_ns), (base + 2, base + 3));
        assert_eq!(
            r.body_segments,
            vec![(base + 2, b"ab".to_vec()), (base + 3, b"cd".to_vec())]
        );
        assert_eq!(r.header("content-length"), Some(&b"4"[..]));
    }
    assert_empty(&conn.finish(1000));
}

#[test]
fn pipelined_responses_pair_in_request_order() {
    let mut conn = Http1Connection::new();
    let writes = [get("/a"), get("/b"), get("/c")].concat();
    assert_empty(&push(&mut conn, Write, 1, &writes));
    let reads = [ok("A"), ok("BB")].concat();
    let first = push(&mut conn, Read, 2, &reads);
    assert_eq!(first.len(), 2);
    let last = push(&mut conn, Read, 3, &ok("CCC"));
    let all: Vec<_> = first.into_iter().chain(last).collect();
    let pairs: Vec<(String, Vec<u8>)> = all
        .iter()
        .map(|e| {
            (
                e.request.target.clone(),
                e.response.as_ref().unwrap().body(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("/a".into(), b"A".to_vec()),
            ("/b".into(), b"BB".to_vec()),
            ("/c".into(), b"CCC".to_vec())
        ]
    );
}

#[test]
fn many_heads_in_one_chunk_and_many_headers() {
    let mut request = b"POST /big HTTP/1.1\r\n".to_vec();
    for i in 0..300 {
        request.extend_from_slice(format!("X-Header-{i}: value-{i}\r\n").as_bytes());
    }
    request.extend_from_slice(b"Content-Length: 2\r\n\r\nhi");
    let writes = [request.clone(), request.clone(), request].concat();
    let mut conn = Http1Connection::new();
    assert_empty(&push(&mut conn, Write, 1, &writes));
    let out = push(&mut conn, Read, 2, &[ok("1"), ok("2"), ok("3")].concat());
    assert_eq!(out.len(), 3);
    for ex in &out {
        assert_eq!(ex.request.headers.len(), 301);
        assert_eq!(ex.request.header("x-header-299"), Some(&b"value-299"[..]));
        assert_eq!(ex.request.body, b"hi");
    }
}

#[test]
fn leading_blank_lines_are_ignored() {
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, b"\r\n\r");
    push(&mut conn, Write, 2, b"\n\nGET / HTTP/1.1\r\n\r\n");
    let out = push(&mut conn, Read, 3, &ok("x"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.start_ns, 2);
}

#[test]
fn chunked_response_segments_follow_reads() {
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, &get("/sse"));
    push(
        &mut conn,
        Read,
        10,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab",
    );
    push(&mut conn, Read, 20, b"cd\r\n2;x=y\r\nef\r\n3\r\nghi\r\n");
    push(&mut conn, Read, 30, b"3\r\nj");
    push(&mut conn, Read, 40, b"kl\r");
    push(&mut conn, Read, 50, b"\n"); // framing only: no segment
    let out = push(&mut conn, Read, 60, b"0\r\n\r\n");
    let r = out[0].response.as_ref().unwrap();
    assert_eq!(
        r.body_segments,
        vec![
            (10, b"ab".to_vec()),
            (20, b"cdefghi".to_vec()),
            (30, b"j".to_vec()),
            (40, b"kl".to_vec()),
        ]
    );
    assert_eq!((r.first_byte_ns, r.end_ns), (10, 60));
    assert_empty(&r.trailers);
}

#[test]
fn chunked_accepts_bare_lf_and_uppercase_hex() {
    let mut conn = Http1Connection::new();
    push(
        &mut conn,
        Write,
        1,
        b"POST / HTTP/1.1\nTransfer-Encoding: gzip, chunked\n\nA\nabcdefghij\n0\n\n",
    );
    let out = push(&mut conn, Read, 2, &ok(""));
    assert_eq!(out[0].request.body, b"abcdefghij");
}

#[test]
fn response_transfer_encoding_without_chunked_reads_until_close() {
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, &get("/"));
    assert_empty(&push(
        &mut conn,
        Read,
        2,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabcdef",
    ));
    let out = conn.finish(9);
    assert_eq!(out[0].response.as_ref().unwrap().body(), b"abcdef");
    assert_eq!(out[0].incomplete, None);
}

#[test]
fn head_response_has_no_body_even_with_content_length() {
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, b"HEAD / HTTP/1.1\r\n\r\n");
    let out = push(
        &mut conn,
        Read,
        2,
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n",
    );
    assert_eq!(out.len(), 1);
    assert_empty(&out[0].response.as_ref().unwrap().body_segments);
}

#[test]
fn no_content_and_not_modified_have_no_body() {
    for head in [
        &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
    ] {
        let mut conn = Http1Connection::new();
        push(&mut conn, Write, 1, &[get("/1"), get("/2")].concat());
        let out = push(&mut conn, Read, 2, &[head, &ok("next")[..]].concat());
        assert_eq!(out.len(), 2);
        assert_empty(&out[0].response.as_ref().unwrap().body());
        assert_eq!(out[1].response.as_ref().unwrap().body(), b"next");
    }
}

#[test]
fn expect_100_continue_records_interim_and_pairs_final() {
    let mut conn = Http1Connection::new();
    push(
        &mut conn,
        Write,
        1,
        b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    );
    assert_empty(&push(
        &mut conn,
        Read,
        2,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n",
    ));
    assert_empty(&push(&mut conn, Write, 3, b"hello"));
    let out = push(
        &mut conn,
        Read,
        4,
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.body, b"hello");
    assert_eq!(out[0].request.end_ns, 3);
    let r = out[0].response.as_ref().unwrap();
    assert_eq!(
        (r.status, r.interim.as_slice(), r.first_byte_ns),
        (201, &[100, 102][..], 4)
    );
}

#[test]
fn early_final_response_waits_for_the_request_body() {
    let mut conn = Http1Connection::new();
    push(
        &mut conn,
        Write,
        1,
        b"POST / HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc",
    );
    assert_empty(&push(
        &mut conn,
        Read,
        2,
        b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n",
    ));
    let out = push(&mut conn, Write, 3, b"def");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].response.as_ref().unwrap().status, 413);
}

#[test]
fn close_delimited_response_completes_at_finish() {
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, b"GET / HTTP/1.0\r\n\r\n");
    assert_empty(&push(
        &mut conn,
        Read,
        2,
        b"HTTP/1.0 200 OK\r\n\r\npart one ",
    ));
    assert_empty(&push(&mut conn, Read, 3, b"part two"));
    let out = conn.finish(7);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].incomplete, None);
    assert_eq!(out[0].request.version, 0);
    let r = out[0].response.as_ref().unwrap();
    assert_eq!(r.body(), b"part one part two");
    assert_eq!(r.body_segments.len(), 2);
    assert_eq!(r.end_ns, 7);
    assert_empty(&conn.finish(8));
    assert_empty(&push(&mut conn, Write, 9, b"junk"));
}

#[test]
fn finish_flags_everything_unfinished() {
    // No response at all.
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, &get("/none"));
    let out = conn.finish(2);
    assert_eq!(out.len(), 1);
    assert!(out[0].response.is_none());
    assert!(
        out[0]
            .incomplete
            .as_deref()
            .unwrap()
            .contains("before the response")
    );

    // Response body cut short; the next pipelined request never answered.
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, &[get("/a"), get("/b")].concat());
    push(
        &mut conn,
        Read,
        2,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345",
    );
    let out = conn.finish(3);
    assert_eq!(out.len(), 2);
    assert!(
        out[0]
            .incomplete
            .as_deref()
            .unwrap()
            .contains("response body")
    );
    assert_eq!(out[0].response.as_ref().unwrap().body(), b"12345");
    assert!(
        out[1]
            .incomplete
            .as_deref()
            .unwrap()
            .contains("before the response")
    );

    // Request body cut short.
    let mut conn = Http1Connection::new();
    push(
        &mut conn,
        Write,
        1,
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
    );
    let out = conn.finish(2);
    assert!(
        out[0]
            .incomplete
            .as_deref()
            .unwrap()
            .contains("request body")
    );
    assert_eq!(out[0].request.body, b"ab");

    // Response head cut short.
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, &get("/"));
    push(&mut conn, Read, 2, b"HTTP/1.1 200 OK\r\nContent-");
    let out = conn.finish(3);
    assert!(
        out[0]
            .incomplete
            .as_deref()
            .unwrap()
            .contains("response head")
    );
    assert!(out[0].response.is_none());

    // A request head cut short yields nothing.
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, b"GET / HTTP/1.1\r\nHost");
    assert_empty(&conn.finish(2));
}

#[test]
fn lost_response_bytes_flag_the_exchange_and_resync() {
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, &get("/a"));
    push(
        &mut conn,
        Read,
        2,
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
    );
    let out = conn.mark_lost(Read, "ring buffer full");
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].incomplete.as_deref(),
        Some("response bytes lost: ring buffer full")
    );
    assert_eq!(out[0].response.as_ref().unwrap().body(), b"0123456789");
    // The rest of the lost response's body is skipped.
    assert_empty(&push(
        &mut conn,
        Read,
        3,
        b"more body that cannot be placed",
    ));
    assert_empty(&push(&mut conn, Write, 4, &get("/b")));
    let out = push(&mut conn, Read, 5, &ok("fine"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/b");
    assert_eq!(out[0].incomplete, None);
    assert_eq!(out[0].response.as_ref().unwrap().body(), b"fine");
}

#[test]
fn lost_whole_request_drops_its_response() {
    let mut conn = Http1Connection::new();
    assert_empty(&conn.mark_lost(Write, "ring buffer full"));
    // The lost request's response arrives: dropped, not an error.
    assert_empty(&push(
        &mut conn,
        Read,
        1,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ));
    // A chunk that does not start a request is skipped while resynchronising.
    assert_empty(&push(&mut conn, Write, 2, b"{\"orphan\": \"body\"}"));
    push(&mut conn, Write, 3, &get("/next"));
    let out = push(&mut conn, Read, 4, &ok("ok"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/next");
    assert_eq!(out[0].incomplete, None);
    // With a request seen again, an unsolicited response is an error once more.
    assert!(matches!(
        conn.push(Read, 5, &ok("x")),
        Err(Http1Error::UnexpectedResponse { .. })
    ));
}

#[test]
fn lost_request_body_flags_the_exchange() {
    let mut conn = Http1Connection::new();
    push(
        &mut conn,
        Write,
        1,
        b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc",
    );
    assert_empty(&conn.mark_lost(Write, "gap of 3 events"));
    assert_empty(&push(&mut conn, Write, 2, b"tail of the body"));
    let out = push(&mut conn, Read, 3, &ok("done"));
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].incomplete.as_deref(),
        Some("request bytes lost: gap of 3 events")
    );
    assert_eq!(out[0].request.body, b"abc");
    assert_eq!(out[0].response.as_ref().unwrap().body(), b"done");
}

#[test]
fn garbage_is_rejected_at_once_and_poisons() {
    let mut conn = Http1Connection::new();
    // A TLS record (we are not at the plaintext layer) fails on its first bytes.
    let err = conn
        .push(Write, 1, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .unwrap_err();
    assert!(
        matches!(
            err,
            Http1Error::NotHttp {
                direction: Write,
                offset: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("\\x16\\x03"), "{err}");
    assert!(conn.is_poisoned());
    assert_empty(&push(&mut conn, Write, 2, &get("/")));
    assert_empty(&push(&mut conn, Read, 3, &ok("")));
    assert_empty(&conn.mark_lost(Read, "ignored"));
    assert_empty(&conn.finish(4));

    // Text that is not a request line fails when its line completes.
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, b"hello there");
    let err = conn.push(Write, 2, b" friend\r\n").unwrap_err();
    assert!(
        matches!(
            err,
            Http1Error::MalformedHead {
                direction: Write,
                ..
            }
        ),
        "{err:?}"
    );

    // A response that is not HTTP.
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, &get("/"));
    let err = conn.push(Read, 2, b"<html>").unwrap_err();
    assert!(
        matches!(
            err,
            Http1Error::NotHttp {
                direction: Read,
                ..
            }
        ),
        "{err:?}"
    );

    // A body longer than declared leaves garbage where the next head should be.
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, &[get("/1"), get("/2")].concat());
    let err = conn
        .push(
            Read,
            2,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabcdef",
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Http1Error::NotHttp {
                direction: Read,
                offset: 40,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn exchanges_completed_before_an_error_come_from_finish() {
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, &get("/good"));
    let bytes = [ok("fine"), b"\x00\x01garbage".to_vec()].concat();
    assert!(conn.push(Read, 2, &bytes).is_err());
    let out = conn.finish(3);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/good");
}

#[test]
fn http2_preface_is_its_own_error() {
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00";
    let mut conn = Http1Connection::new();
    assert!(matches!(
        conn.push(Write, 1, preface),
        Err(Http1Error::Http2Preface)
    ));

    let mut conn = Http1Connection::new();
    let mut result = Ok(vec![]);
    for (i, b) in preface.iter().enumerate() {
        result = conn.push(Write, 1, std::slice::from_ref(b));
        if result.is_err() {
            assert_eq!(i, 15, "detected when the preface line completes");
            break;
        }
    }
    assert!(matches!(result, Err(Http1Error::Http2Preface)));
    assert!(!looks_like_http1_request(preface));
}

#[test]
fn looks_like_http1_request_cases() {
    assert!(looks_like_http1_request(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n"
    ));
    assert!(looks_like_http1_request(b"GET / HTTP/1.0\n"));
    assert!(looks_like_http1_request(b"GET /partial-line-without-versi"));
    assert!(!looks_like_http1_request(b"GET / HTTP/2\r\n"));
    assert!(!looks_like_http1_request(b"GE"));
    assert!(!looks_like_http1_request(b"get / HTTP/1.1\r\n"));
    assert!(!looks_like_http1_request(b"GET /\x00 HTTP/1.1\r\n"));
    assert!(!looks_like_http1_request(b"\x16\x03\x01"));
    assert!(!looks_like_http1_request(b""));
}

/// A chunked body and a check of the error it must cause.
type ChunkCase = (&'static [u8], fn(&ChunkError) -> bool);

#[test]
fn invalid_chunked_bodies() {
    let cases: [ChunkCase; 5] = [
        (b"zz\r\n", |e| {
            matches!(e, ChunkError::InvalidSize { byte: b'z' })
        }),
        (b"\r\n", |e| {
            matches!(e, ChunkError::InvalidSize { byte: b'\r' })
        }),
        (b"1fffffffffffffffff\r\n", |e| {
            matches!(e, ChunkError::SizeOverflow)
        }),
        (b"3\r\nabcX", |e| {
            matches!(e, ChunkError::MissingDataEnd { byte: b'X' })
        }),
        (b"0\r\nbad trailer\r\n\r\n", |e| {
            matches!(e, ChunkError::MalformedTrailers(_))
        }),
    ];
    for (body, expected) in cases {
        let mut conn = Http1Connection::new();
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let err = conn
            .push(Write, 1, &[&head[..], body].concat())
            .unwrap_err();
        match &err {
            Http1Error::InvalidChunkedBody {
                direction: Write,
                source,
                ..
            } if expected(source) => {}
            other => panic!(
                "body {:?}: unexpected {other:?}",
                body.escape_ascii().to_string()
            ),
        }
    }
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, &get("/"));
    let err = conn
        .push(
            Read,
            2,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\nq",
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Http1Error::InvalidChunkedBody {
                direction: Read,
                offset: 57,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn chunk_extension_line_is_bounded() {
    let mut conn = Http1Connection::new();
    push(
        &mut conn,
        Write,
        1,
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;",
    );
    let err = conn.push(Write, 2, &vec![b'x'; 70 * 1024]).unwrap_err();
    assert!(matches!(
        err,
        Http1Error::InvalidChunkedBody {
            source: ChunkError::LineTooLong { .. },
            ..
        }
    ));
}

#[test]
fn invalid_framing_headers() {
    for value in ["abc", "-1", "1, 2", "99999999999999999999999", ""] {
        let mut conn = Http1Connection::new();
        let head = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
        let err = conn.push(Write, 1, head.as_bytes()).unwrap_err();
        assert!(
            matches!(err, Http1Error::InvalidContentLength { .. }),
            "{value:?}: {err:?}"
        );
    }
    // Repeated identical values are fine.
    let mut conn = Http1Connection::new();
    push(
        &mut conn,
        Write,
        1,
        b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok",
    );
    assert_eq!(push(&mut conn, Read, 2, &ok(""))[0].request.body, b"ok");

    let mut conn = Http1Connection::new();
    let err = conn
        .push(
            Write,
            1,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        )
        .unwrap_err();
    assert!(
        matches!(err, Http1Error::UnsupportedTransferEncoding { .. }),
        "{err:?}"
    );
}

#[test]
fn oversized_head_is_rejected() {
    let mut head = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    head.resize(MAX_HEAD_BYTES + 10, b'a');
    let mut conn = Http1Connection::new();
    let err = conn.push(Write, 1, &head).unwrap_err();
    assert!(
        matches!(
            err,
            Http1Error::HeadTooLarge {
                direction: Write,
                ..
            }
        ),
        "{err:?}"
    );

    // Arriving in pieces, it fails once the limit is passed, not before.
    let mut conn = Http1Connection::new();
    let mut failed_at = None;
    for (i, piece) in head.chunks(64 * 1024).enumerate() {
        if conn.push(Write, 1, piece).is_err() {
            failed_at = Some(i);
            break;
        }
    }
    assert_eq!(failed_at, Some(16));
}

#[test]
fn head_fed_byte_by_byte_costs_linear_time() {
    // Half a megabyte of head one byte per push: quadratic rescanning would take minutes.
    let mut head = b"POST / HTTP/1.1\r\n".to_vec();
    let mut i = 0;
    while head.len() < 512 * 1024 {
        head.extend_from_slice(format!("X-H{i}: {}\r\n", "v".repeat(100)).as_bytes());
        i += 1;
    }
    head.extend_from_slice(b"Content-Length: 1\r\n\r\nz");
    let mut conn = Http1Connection::new();
    for b in &head {
        push(&mut conn, Write, 1, std::slice::from_ref(b));
    }
    let out = push(&mut conn, Read, 2, &ok(""));
    assert_eq!(out[0].request.headers.len(), i + 1);
    assert_eq!(out[0].request.body, b"z");
}

#[test]
fn response_with_no_request_pending_is_an_error() {
    let mut conn = Http1Connection::new();
    let err = conn.push(Read, 1, &ok("hi")).unwrap_err();
    assert!(
        matches!(err, Http1Error::UnexpectedResponse { offset: 0 }),
        "{err:?}"
    );

    // A server-side connection: its reads are requests.
    let mut conn = Http1Connection::new();
    let err = conn.push(Read, 1, &get("/")).unwrap_err();
    assert!(
        matches!(err, Http1Error::UnexpectedResponse { .. }),
        "{err:?}"
    );

    // One response too many.
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, &get("/"));
    let err = conn
        .push(Read, 2, &[ok("a"), ok("b")].concat())
        .unwrap_err();
    assert!(
        matches!(err, Http1Error::UnexpectedResponse { offset: 39 }),
        "{err:?}"
    );
}

#[test]
fn switching_protocols_ends_http() {
    let mut conn = Http1Connection::new();
    push(
        &mut conn,
        Write,
        1,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    let out = push(
        &mut conn,
        Read,
        2,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].response.as_ref().unwrap().status, 101);
    assert!(conn.is_upgraded());
    assert_empty(&push(&mut conn, Write, 3, b"\x81\x85\x00\x00\x00\x00hello"));
    assert_empty(&conn.finish(4));
}

fn big_body() -> Vec<u8> {
    let mut rng = XorShift(42);
    (0..4 * 1024 * 1024)
        .map(|_| u8::try_from(rng.below(256)).unwrap())
        .collect()
}

#[test]
fn four_mib_bodies_in_one_chunk_and_in_16k_chunks() {
    let body = big_body();
    let request = [
        format!(
            "POST /upload HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes(),
        body.clone(),
    ]
    .concat();
    let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in body.chunks(100_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let length = [
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes(),
        body.clone(),
    ]
    .concat();

    for response in [&chunked, &length] {
        for piece_len in [usize::MAX, 16 * 1024] {
            let mut conn = Http1Connection::new();
            let mut out = Vec::new();
            for piece in request.chunks(piece_len.min(request.len())) {
                out.extend(push(&mut conn, Write, 1, piece));
            }
            for (i, piece) in response.chunks(piece_len.min(response.len())).enumerate() {
                out.extend(push(&mut conn, Read, 10 + u64::try_from(i).unwrap(), piece));
            }
            assert_eq!(out.len(), 1);
            assert!(out[0].request.body == body, "request body differs");
            let r = out[0].response.as_ref().unwrap();
            assert!(r.body() == body, "response body differs");
            if piece_len == usize::MAX {
                assert_eq!(r.body_segments.len(), 1);
            } else {
                assert!(r.body_segments.windows(2).all(|w| w[0].0 < w[1].0));
            }
        }
    }
}

#[test]
fn header_values_keep_raw_bytes_and_order() {
    let mut conn = Http1Connection::new();
    push(
        &mut conn,
        Write,
        1,
        b"GET / HTTP/1.1\r\nSet: a\r\nset: b\r\nX-Bin: \xe2\x9c\x93\r\n\r\n",
    );
    let out = push(
        &mut conn,
        Read,
        2,
        b"HTTP/1.1 200 \xc3\xa9t\xc3\xa9\r\nContent-Length: 0\r\n\r\n",
    );
    let req = &out[0].request;
    assert_eq!(
        req.headers,
        vec![
            ("Set".to_owned(), b"a".to_vec()),
            ("set".to_owned(), b"b".to_vec()),
            ("X-Bin".to_owned(), "✓".as_bytes().to_vec()),
        ]
    );
    assert_eq!(req.header("SET"), Some(&b"a"[..]));
    assert_eq!(out[0].response.as_ref().unwrap().status, 200);
}

#[test]
fn error_messages_name_direction_and_offset() {
    let mut conn = Http1Connection::new();
    push(&mut conn, Write, 1, &get("/"));
    let err = conn
        .push(Read, 2, b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid Content-Length \"x\" in response head at offset 0"
    );
    let err = Http1Error::InvalidChunkedBody {
        direction: Write,
        offset: 7,
        source: ChunkError::SizeOverflow,
    };
    assert_eq!(err.to_string(), "invalid chunked request body at offset 7");
    assert_eq!(
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .as_deref(),
        Some("chunk size does not fit in 64 bits")
    );
}

#[test]
fn mutated_and_random_input_never_panics() {
    let steps = transcript();
    let mut rng = XorShift(7);
    for _ in 0..500 {
        let mut conn = Http1Connection::new();
        for (dir, bytes) in &steps {
            let mut bytes = bytes.clone();
            // Overwrite a few bytes, sometimes with the characters framing depends on.
            for _ in 0..rng.below(4) {
                let at = rng.below(bytes.len());
                bytes[at] = *b"\r\n:; 0fx\x00\xff".get(rng.below(10)).unwrap();
            }
            let cut = rng.below(bytes.len() + 1);
            for piece in [&bytes[..cut], &bytes[cut..]] {
                if rng.below(50) == 0 {
                    let _ = conn.mark_lost(*dir, "fuzz");
                }
                let _ = conn.push(*dir, 1, piece);
            }
        }
        let _ = conn.finish(2);
    }
    for _ in 0..500 {
        let mut conn = Http1Connection::new();
        for _ in 0..4 {
            let len = rng.below(64);
            let bytes: Vec<u8> = (0..len)
                .map(|_| u8::try_from(rng.below(256)).unwrap())
                .collect();
            let dir = if rng.below(2) == 0 { Write } else { Read };
            let _ = conn.push(dir, 1, &[&get("/")[..], &bytes].concat());
        }
        let _ = conn.finish(2);
    }
}
