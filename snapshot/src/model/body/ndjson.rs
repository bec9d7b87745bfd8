//! Newline-delimited JSON (`application/x-ndjson`), as Ollama streams its native
//! `/api/chat` and `/api/generate` answers: one JSON document per line, each line
//! written when it was generated. A body is stored as its lines, each with when it
//! arrived, when one layout writes every line back to the recorded bytes; replay sends
//! each line at its offset, like SSE events.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::JsonStyle;

/// One line of an NDJSON body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NdjsonLine {
    /// When the line's last byte arrived, in ms since request start.
    pub offset_ms: f64,
    /// The line's document.
    pub json: Value,
}

/// The lines of `bytes` (the whole decoded body, which arrived in `segments`, each with
/// its arrival time) and the one layout that writes each back, newline included; `None`
/// when a line is not JSON, the body does not end in a newline, or no layout writes the
/// lines back to exactly `bytes`.
pub(super) fn parse(
    bytes: &[u8],
    segments: &[(f64, Vec<u8>)],
) -> Option<(Vec<NdjsonLine>, JsonStyle)> {
    if !bytes.ends_with(b"\n") {
        return None;
    }
    let mut arrivals = Vec::with_capacity(segments.len());
    let mut end = 0;
    for (at, piece) in segments {
        end += piece.len();
        arrivals.push((end, *at));
    }
    let mut lines = Vec::new();
    let mut style = None;
    let mut start = 0;
    for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'\n') {
        let line = &bytes[start..=i];
        let json: Value = serde_json::from_slice(line).ok()?;
        let line_style = *style.get_or_insert(JsonStyle::infer(&json, line)?);
        if line_style.write(&json) != line {
            return None;
        }
        let offset_ms = arrivals
            .iter()
            .find(|(end, _)| i < *end)
            .map_or(0.0, |(_, at)| *at);
        lines.push(NdjsonLine { offset_ms, json });
        start = i + 1;
    }
    Some((lines, style?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] =
        b"{\"done\":false,\"response\":\"a\\n\"}\n{\"done\":true,\"eval_count\":2}\n";

    #[test]
    fn each_line_gets_the_time_of_the_segment_that_ended_it() {
        let split = STREAM.iter().position(|&b| b == b'\n').unwrap() + 1;
        let segments = vec![
            (5.0, STREAM[..split - 1].to_vec()),
            (6.0, STREAM[split - 1..split + 3].to_vec()),
            (20.0, STREAM[split + 3..].to_vec()),
        ];
        let (lines, style) = parse(STREAM, &segments).unwrap();
        assert_eq!(
            lines.iter().map(|l| l.offset_ms).collect::<Vec<_>>(),
            [6.0, 20.0]
        );
        assert_eq!(lines[1].json["eval_count"], 2);
        let rejoined: Vec<u8> = lines.iter().flat_map(|l| style.write(&l.json)).collect();
        assert_eq!(rejoined, STREAM);
    }

    #[test]
    fn bodies_no_layout_writes_back_are_refused() {
        let whole = |b: &[u8]| parse(b, &[(1.0, b.to_vec())]);
        assert!(whole(b"{\"a\":1}").is_none(), "no final newline");
        assert!(whole(b"{\"a\":1}\nnot json\n").is_none());
        assert!(whole(b"{\"a\":1}\n{\"a\": 1}\n").is_none(), "mixed layouts");
        assert!(
            whole(b"{\"a\":1.0e0}\n").is_none(),
            "a number no serializer writes"
        );
        assert!(whole(b"{\"a\": 1}\n{\"b\": 2}\n").is_some());
    }
}

#[cfg(test)]
mod body_tests {
    use super::super::Body;

    #[test]
    fn an_ndjson_body_is_stored_by_line_and_written_back_as_recorded() {
        let bytes: &[u8] = b"{\"a\":1}\n{\"b\":[2]}\n";
        let body = Body::from_http(
            Some("application/x-ndjson"),
            None,
            &[(3.0, &bytes[..8]), (9.0, &bytes[8..])],
        )
        .unwrap();
        assert!(
            matches!(&body, Body::Ndjson { lines, .. } if lines.len() == 2),
            "{body:?}"
        );
        assert_eq!(body.to_bytes(), bytes);
        let pieces = body.json_stream().unwrap();
        assert_eq!(
            pieces,
            [(3.0, bytes[..8].to_vec()), (9.0, bytes[8..].to_vec())]
        );
        let stored = serde_json::to_string(&body).unwrap();
        assert!(
            stored.starts_with(r#"{"kind":"ndjson","lines":[{"offset_ms":3.0"#),
            "{stored}"
        );
        assert_eq!(serde_json::from_str::<Body>(&stored).unwrap(), body);
        // A body that is not NDJSON after all is kept as text, losing nothing.
        let odd =
            Body::from_http(Some("application/x-ndjson"), None, &[(1.0, b"{\"a\":1}")]).unwrap();
        assert!(matches!(odd, Body::Text { .. }), "{odd:?}");
    }
}
