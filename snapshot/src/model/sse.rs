//! Server-sent events: parsing a recorded `text/event-stream` into the events a
//! client would see (WHATWG HTML "event stream interpretation"), each stamped
//! with when it arrived, and writing events back as the bytes they arrived as.
//! An event whose fields, written back, would not give its bytes (comments such as
//! `OpenRouter`'s `: OPENROUTER PROCESSING`, `data:` without a space, another field
//! order) keeps those bytes in [`SseEvent::wire`].

use std::mem;

use serde::{Deserialize, Serialize};

/// One dispatched server-sent event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SseEvent {
    /// Milliseconds from request start to the arrival of the blank line that
    /// ended this event; replay sends the event at the same offset.
    pub offset_ms: f64,
    /// The `event:` field; absent means the default type, `message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field, when the event carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The `retry:` field (reconnection time in ms), when the event carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u64>,
    /// The bytes the event arrived as, with the comments and event-less blocks since the
    /// previous event (for the last event, also those after it), kept only when writing the
    /// fields back would give other bytes. Replay sends them while they still parse to this
    /// event's fields; an event edited by hand is written from its fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire: Option<String>,
}

impl SseEvent {
    /// The event's wire form: `event:`, `id:`, `retry:` and `data:` lines and
    /// the blank line that dispatches it, lines ended with LF.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.wire_bytes(false)
    }

    /// The event's wire form: the bytes it arrived as ([`SseEvent::wire`]) while they
    /// still parse to its fields, else its fields with lines ended with CRLF when `crlf` is
    /// set (as the body it came from had them), else LF.
    pub fn wire_bytes(&self, crlf: bool) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out, crlf);
        out
    }

    /// [`SseEvent::wire`], if it parses to exactly this event.
    fn current_wire(&self) -> Option<&str> {
        let wire = self.wire.as_deref()?;
        let parsed = parse(&[(self.offset_ms, wire.as_bytes().to_vec())]);
        let [again] = parsed.events.as_slice() else {
            return None;
        };
        (parsed.unterminated.is_none()
            && (&again.event, &again.data, &again.id, again.retry)
                == (&self.event, &self.data, &self.id, self.retry))
            .then_some(wire)
    }

    fn write_to(&self, out: &mut Vec<u8>, crlf: bool) {
        if let Some(wire) = self.current_wire() {
            out.extend_from_slice(wire.as_bytes());
            return;
        }
        self.write_fields(out, crlf);
    }

    /// The fields alone, as the canonical wire form.
    fn write_fields(&self, out: &mut Vec<u8>, crlf: bool) {
        let line_end: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let mut field = |name: &str, value: &str| {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(line_end);
        };
        if let Some(event) = &self.event {
            field("event", event);
        }
        if let Some(id) = &self.id {
            field("id", id);
        }
        if let Some(retry) = self.retry {
            field("retry", &retry.to_string());
        }
        for line in self.data.split('\n') {
            field("data", line);
        }
        out.extend_from_slice(line_end);
    }
}

/// A parsed stream: the dispatched events, whatever followed the last one
/// without a terminating blank line, and whether its lines end in CRLF.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub events: Vec<SseEvent>,
    pub unterminated: Option<String>,
    pub crlf: bool,
}

/// Parses decoded body segments that together are valid UTF-8.
///
/// Comments and blocks without a `data:` field dispatch nothing (a client never
/// sees them); their bytes go with the next event's [`SseEvent::wire`] (after
/// the last event, with its). Bytes after the last blank line are kept
/// verbatim in `unterminated` so a stream cut short replays cut short. So
/// [`write`] gives back exactly the parsed bytes.
pub(crate) fn parse(segments: &[(f64, Vec<u8>)]) -> Parsed {
    const BOM: &[u8] = b"\xef\xbb\xbf";
    let bytes = || {
        segments
            .iter()
            .flat_map(|(at, bytes)| bytes.iter().map(move |b| (*at, *b)))
    };
    // A byte order mark at the very start is not part of the stream (but is of its bytes).
    let skip = if bytes().take(3).map(|(_, b)| b).eq(BOM.iter().copied()) {
        BOM.len()
    } else {
        0
    };
    let mut parser = Parser {
        pos: skip,
        ..Parser::default()
    };
    for (at, b) in bytes().skip(skip) {
        parser.push(at, b);
    }
    let all: Vec<u8> = bytes().map(|(_, b)| b).collect();
    parser.finish(&all)
}

/// Writes events, then any unterminated tail, as wire bytes, lines ended with
/// CRLF when `crlf` is set, else LF.
pub(crate) fn write(events: &[SseEvent], unterminated: Option<&str>, crlf: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        event.write_to(&mut out, crlf);
    }
    if let Some(tail) = unterminated {
        out.extend_from_slice(tail.as_bytes());
    }
    out
}

#[derive(Default)]
struct Block {
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
}

#[derive(Default)]
struct Parser {
    /// The previous byte was CR, so an LF now belongs to the same line end.
    after_cr: bool,
    /// That CR ended a blank line (so its LF belongs with the block it ended).
    cr_ended_block: bool,
    line: Vec<u8>,
    block: Block,
    /// Bytes consumed so far, the byte order mark included.
    pos: usize,
    /// Where the bytes after the last blank line start.
    block_end: usize,
    /// Each event, with where its bytes end (they start where the previous event's end).
    events: Vec<(SseEvent, usize)>,
    /// Whether the first line end seen was CRLF.
    crlf: Option<bool>,
}

impl Parser {
    fn push(&mut self, at: f64, b: u8) {
        self.pos += 1;
        let cr_ended_block = mem::take(&mut self.cr_ended_block);
        if mem::take(&mut self.after_cr) && b == b'\n' {
            self.crlf.get_or_insert(true);
            if cr_ended_block {
                self.block_end = self.pos;
                if let Some((_, end)) = self.events.last_mut()
                    && *end == self.pos - 1
                {
                    *end = self.pos;
                }
            }
            return;
        }
        match b {
            b'\r' | b'\n' => {
                self.after_cr = b == b'\r';
                if b == b'\n' {
                    self.crlf.get_or_insert(false);
                }
                self.end_line(at);
            }
            _ => self.line.push(b),
        }
    }

    fn end_line(&mut self, at: f64) {
        let line = mem::take(&mut self.line);
        if line.is_empty() {
            self.block_end = self.pos;
            self.cr_ended_block = self.after_cr;
            self.dispatch(at);
            return;
        }
        // Lines end at ASCII bytes, so a line of a valid UTF-8 stream is valid.
        let line = String::from_utf8_lossy(&line);
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => self.block.event = Some(value.to_owned()),
            "data" => {
                let data = self.block.data.get_or_insert_with(String::new);
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => self.block.id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    self.block.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, at: f64) {
        let block = mem::take(&mut self.block);
        let Some(mut data) = block.data else {
            return;
        };
        data.pop();
        let event = SseEvent {
            offset_ms: at,
            event: block.event.filter(|e| !e.is_empty()),
            data,
            id: block.id,
            retry: block.retry,
            wire: None,
        };
        self.events.push((event, self.pos));
    }

    /// The events, each keeping its bytes of `all` (the parsed bytes) as its wire where its
    /// fields do not write them back.
    fn finish(self, all: &[u8]) -> Parsed {
        let crlf = self.crlf.unwrap_or(false);
        let count = self.events.len();
        let mut start = 0;
        let events = self
            .events
            .into_iter()
            .enumerate()
            .map(|(i, (mut event, end))| {
                // Whole blocks after the last event go out with it.
                let end = if i + 1 == count { self.block_end } else { end };
                let raw = &all[start..end];
                start = end;
                let mut written = Vec::new();
                event.write_fields(&mut written, crlf);
                if written != raw {
                    // Lines end at ASCII bytes, so the raw bytes of a valid UTF-8 stream are.
                    event.wire = Some(String::from_utf8_lossy(raw).into_owned());
                }
                event
            })
            .collect();
        // With no event, the whole blocks are the start of the tail.
        let tail = &all[start.min(all.len())..];
        let unterminated = (!tail.is_empty()).then(|| String::from_utf8_lossy(tail).into_owned());
        Parsed {
            events,
            unterminated,
            crlf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Parsed {
        let parsed = parse(&[(0.0, text.as_bytes().to_vec())]);
        assert_eq!(
            write(&parsed.events, parsed.unterminated.as_deref(), parsed.crlf),
            text.as_bytes(),
            "written back as parsed"
        );
        parsed
    }

    /// The events' fields, without the bytes they arrived as.
    fn fields(parsed: &Parsed) -> Vec<SseEvent> {
        let mut events = parsed.events.clone();
        for event in &mut events {
            event.wire = None;
        }
        events
    }

    fn ev(offset_ms: f64, event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            offset_ms,
            event: event.map(str::to_owned),
            data: data.to_owned(),
            id: None,
            retry: None,
            wire: None,
        }
    }

    #[test]
    fn fields_multiline_data_and_comments() {
        let p = one(": keep-alive\nevent: delta\ndata: a\ndata:b\ndata:  c\nid: 7\nretry: 300\n\n");
        assert_eq!(
            fields(&p),
            [SseEvent {
                offset_ms: 0.0,
                event: Some("delta".into()),
                data: "a\nb\n c".into(),
                id: Some("7".into()),
                retry: Some(300),
                wire: None,
            }]
        );
        assert!(p.unterminated.is_none());
    }

    #[test]
    fn all_line_endings_are_accepted() {
        for text in [
            "data: x\n\ndata: y\n\n",
            "data: x\r\n\r\ndata: y\r\n\r\n",
            "data: x\r\rdata: y\r\r",
        ] {
            let p = one(text);
            assert_eq!(
                fields(&p),
                [ev(0.0, None, "x"), ev(0.0, None, "y")],
                "{text:?}"
            );
            assert!(p.unterminated.is_none(), "{text:?}");
        }
    }

    #[test]
    fn offset_is_where_the_blank_line_arrived() {
        let segments = vec![
            (5.0, b"data: {\"a\"".to_vec()),
            (9.0, b": 1}\n".to_vec()),
            (12.0, b"\r".to_vec()),
            (20.0, b"\ndata: second\r".to_vec()),
            (30.0, b"\n\r\n".to_vec()),
        ];
        let p = parse(&segments);
        assert_eq!(
            write(&p.events, None, p.crlf),
            b"data: {\"a\": 1}\n\r\ndata: second\r\n\r\n"
        );
        assert_eq!(
            fields(&p),
            [ev(12.0, None, "{\"a\": 1}"), ev(30.0, None, "second")]
        );
        assert!(p.unterminated.is_none());
    }

    #[test]
    fn blocks_without_data_dispatch_nothing() {
        let p = one("event: ping\n\n: only a comment\n\nid: 3\n\ndata:\n\n");
        assert_eq!(fields(&p), [ev(0.0, None, "")]);
    }

    #[test]
    fn field_without_colon_and_unknown_fields() {
        let p = one("data\nfoo: bar\nretry: 12x\nevent:\n\n");
        assert_eq!(fields(&p), [ev(0.0, None, "")]);
        assert_eq!(p.events[0].retry, None);
    }

    #[test]
    fn bom_is_not_a_field_and_tail_is_kept() {
        // `one` checks that both are written back.
        let p = one("\u{feff}data: a\n\ndata: cut sh");
        assert_eq!(fields(&p), [ev(0.0, None, "a")]);
        assert_eq!(p.unterminated.as_deref(), Some("data: cut sh"));
    }

    #[test]
    fn canonical_streams_keep_no_wire() {
        for text in [
            "data: x\n\nevent: e\ndata: y\n\n",
            "data: x\r\n\r\ndata: y\r\n\r\n",
        ] {
            let p = one(text);
            assert!(
                p.events.iter().all(|e| e.wire.is_none()),
                "{text:?}: {:?}",
                p.events
            );
            assert_eq!(p.crlf, text.contains('\r'));
        }
    }

    #[test]
    fn comments_go_out_with_the_next_event_and_trailing_ones_with_the_last() {
        let text =
            ": OPENROUTER PROCESSING\n\ndata: a\n\n: OPENROUTER PROCESSING\n\ndata: b\n\n: bye\n\n";
        let p = one(text);
        assert_eq!(fields(&p), [ev(0.0, None, "a"), ev(0.0, None, "b")]);
        assert_eq!(
            p.events[0].wire.as_deref(),
            Some(": OPENROUTER PROCESSING\n\ndata: a\n\n")
        );
        assert_eq!(
            p.events[1].wire.as_deref(),
            Some(": OPENROUTER PROCESSING\n\ndata: b\n\n: bye\n\n")
        );
        assert_eq!(
            p.events[0].wire_bytes(false),
            b": OPENROUTER PROCESSING\n\ndata: a\n\n"
        );
    }

    #[test]
    fn an_edited_event_is_written_from_its_fields() {
        let mut p = one(": keep-alive\ndata:a\n\n");
        p.events[0].data = "edited".into();
        assert_eq!(p.events[0].to_bytes(), b"data: edited\n\n");
    }

    #[test]
    fn comments_alone_are_the_tail() {
        let p = one(": only\n\n: comments\n\n");
        assert_eq!(p.events, []);
        assert_eq!(p.unterminated.as_deref(), Some(": only\n\n: comments\n\n"));
    }

    #[test]
    fn write_then_parse_gives_the_same_events() {
        let events = vec![
            SseEvent {
                offset_ms: 0.0,
                event: Some("message_start".into()),
                data: "{\"x\":1}\n second line".into(),
                id: Some("abc".into()),
                retry: Some(1000),
                wire: None,
            },
            ev(0.0, None, "[DONE]"),
            ev(0.0, None, ""),
        ];
        let wire = write(&events, None, false);
        assert_eq!(one(std::str::from_utf8(&wire).unwrap()).events, events);
        assert_eq!(events[1].to_bytes(), b"data: [DONE]\n\n");
    }
}
