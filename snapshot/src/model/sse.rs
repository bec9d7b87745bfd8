//! Server-sent events: parsing a recorded `text/event-stream` into the events a
//! client would see (WHATWG HTML "event stream interpretation"), each stamped
//! with when it arrived, and writing events back as wire bytes for replay.

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
}

impl SseEvent {
    /// The event's wire form: `event:`, `id:`, `retry:` and `data:` lines and
    /// the blank line that dispatches it, lines ended with LF.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.wire_bytes(false)
    }

    /// The event's wire form with lines ended with CRLF when `crlf` is set (as
    /// the body it came from had them), else LF.
    pub fn wire_bytes(&self, crlf: bool) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out, crlf);
        out
    }

    fn write_to(&self, out: &mut Vec<u8>, crlf: bool) {
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

/// A parsed stream: the dispatched events and whatever followed the last one
/// without a terminating blank line.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub events: Vec<SseEvent>,
    pub unterminated: Option<String>,
}

/// Parses decoded body segments that together are valid UTF-8.
///
/// Comments and blocks without a `data:` field dispatch nothing and are not
/// kept (a client never sees them). Bytes after the last blank line are kept
/// verbatim in `unterminated` so a stream cut short replays cut short.
pub(crate) fn parse(segments: &[(f64, Vec<u8>)]) -> Parsed {
    const BOM: &[u8] = b"\xef\xbb\xbf";
    let bytes = || {
        segments
            .iter()
            .flat_map(|(at, bytes)| bytes.iter().map(move |b| (*at, *b)))
    };
    // A byte order mark at the very start is not part of the stream.
    let skip = if bytes().take(3).map(|(_, b)| b).eq(BOM.iter().copied()) {
        BOM.len()
    } else {
        0
    };
    let mut parser = Parser::default();
    for (at, b) in bytes().skip(skip) {
        parser.push(at, b);
    }
    parser.finish()
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
    line: Vec<u8>,
    /// Raw bytes since the last blank line, kept for an unterminated tail.
    tail: Vec<u8>,
    block: Block,
    events: Vec<SseEvent>,
}

impl Parser {
    fn push(&mut self, at: f64, b: u8) {
        if mem::take(&mut self.after_cr) && b == b'\n' {
            return;
        }
        self.tail.push(b);
        match b {
            b'\r' | b'\n' => {
                self.after_cr = b == b'\r';
                self.end_line(at);
            }
            _ => self.line.push(b),
        }
    }

    fn end_line(&mut self, at: f64) {
        let line = mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(at);
            self.tail.clear();
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
        self.events.push(SseEvent {
            offset_ms: at,
            event: block.event.filter(|e| !e.is_empty()),
            data,
            id: block.id,
            retry: block.retry,
        });
    }

    fn finish(self) -> Parsed {
        let unterminated =
            (!self.tail.is_empty()).then(|| String::from_utf8_lossy(&self.tail).into_owned());
        Parsed {
            events: self.events,
            unterminated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Parsed {
        parse(&[(0.0, text.as_bytes().to_vec())])
    }

    fn ev(offset_ms: f64, event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            offset_ms,
            event: event.map(str::to_owned),
            data: data.to_owned(),
            id: None,
            retry: None,
        }
    }

    #[test]
    fn fields_multiline_data_and_comments() {
        let p = one(": keep-alive\nevent: delta\ndata: a\ndata:b\ndata:  c\nid: 7\nretry: 300\n\n");
        assert_eq!(
            p.events,
            [SseEvent {
                offset_ms: 0.0,
                event: Some("delta".into()),
                data: "a\nb\n c".into(),
                id: Some("7".into()),
                retry: Some(300),
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
                p.events,
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
            p.events,
            [ev(12.0, None, "{\"a\": 1}"), ev(30.0, None, "second")]
        );
        assert!(p.unterminated.is_none());
    }

    #[test]
    fn blocks_without_data_dispatch_nothing() {
        let p = one("event: ping\n\n: only a comment\n\nid: 3\n\ndata:\n\n");
        assert_eq!(p.events, [ev(0.0, None, "")]);
    }

    #[test]
    fn field_without_colon_and_unknown_fields() {
        let p = one("data\nfoo: bar\nretry: 12x\nevent:\n\n");
        assert_eq!(p.events, [ev(0.0, None, "")]);
        assert_eq!(p.events[0].retry, None);
    }

    #[test]
    fn bom_is_skipped_and_tail_is_kept() {
        let p = one("\u{feff}data: a\n\ndata: cut sh");
        assert_eq!(p.events, [ev(0.0, None, "a")]);
        assert_eq!(p.unterminated.as_deref(), Some("data: cut sh"));
        assert_eq!(
            write(&p.events, p.unterminated.as_deref(), false),
            b"data: a\n\ndata: cut sh"
        );
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
            },
            ev(0.0, None, "[DONE]"),
            ev(0.0, None, ""),
        ];
        let wire = write(&events, None, false);
        assert_eq!(one(std::str::from_utf8(&wire).unwrap()).events, events);
        assert_eq!(events[1].to_bytes(), b"data: [DONE]\n\n");
    }
}
