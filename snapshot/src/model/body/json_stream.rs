//! A JSON array that arrives element by element, as Gemini's `streamGenerateContent`
//! without `alt=sse` sends it: `[{…}` then `,\r\n{…}` … then `]`. The body is stored as
//! one JSON document; what this module adds is where its wire text splits into the
//! pieces that carried each element (at the commas between top-level elements) and
//! when each element arrived, so that replay can send each piece at its offset.

/// The positions of the commas between the top-level elements of the JSON array in
/// `bytes` (valid JSON), or `None` when the document is not an array.
pub(super) fn element_separators(bytes: &[u8]) -> Option<Vec<usize>> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    if bytes[start] != b'[' {
        return None;
    }
    let mut separators = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in bytes.iter().enumerate().skip(start) {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => separators.push(i),
            _ => {}
        }
    }
    Some(separators)
}

/// When each element of the array in `bytes` arrived: the time of the segment that
/// carried its last byte. `segments` hold `bytes` in order, each with its arrival time.
/// `None` when the document is not an array, is empty, or arrived all at once.
pub(super) fn element_offsets(bytes: &[u8], segments: &[(f64, Vec<u8>)]) -> Option<Vec<f64>> {
    let separators = element_separators(bytes)?;
    let close = bytes.iter().rposition(|&b| b == b']')?;
    if bytes[..close]
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'[')
    {
        return None;
    }
    // Each element ends at the last non-blank byte before its separator (or the `]`).
    let ends = separators.iter().chain([&close]).map(|&end| {
        bytes[..end]
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .unwrap_or(0)
    });
    let mut arrivals = Vec::with_capacity(segments.len());
    let mut end = 0;
    for (at, piece) in segments {
        end += piece.len();
        arrivals.push((end, *at));
    }
    let offsets: Vec<f64> = ends
        .map(|pos| {
            arrivals
                .iter()
                .find(|(end, _)| pos < *end)
                .map_or(0.0, |(_, at)| *at)
        })
        .collect();
    let spread = offsets.windows(2).any(|w| w[1] > w[0]);
    spread.then_some(offsets)
}

/// `bytes` (a JSON array's wire text) cut at its element separators, each piece with
/// the offset of its element; pieces beyond the recorded offsets (elements added by
/// hand) go with the last offset.
pub(super) fn pieces(bytes: &[u8], offsets_ms: &[f64]) -> Vec<(f64, Vec<u8>)> {
    let separators = element_separators(bytes).unwrap_or_default();
    let mut out = Vec::with_capacity(separators.len() + 1);
    let mut start = 0;
    for (i, end) in separators.into_iter().chain([bytes.len()]).enumerate() {
        let at = offsets_ms
            .get(i)
            .or(offsets_ms.last())
            .copied()
            .unwrap_or(0.0);
        out.push((at, bytes[start..end].to_vec()));
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"[{\"a\": \"x,]\\\"\"}\n,\r\n{\"b\": [1, 2]}\n,\r\n{\"c\": {}}\n]";

    #[test]
    fn separators_are_the_commas_between_top_level_elements() {
        let seps = element_separators(STREAM).unwrap();
        assert_eq!(seps.len(), 2);
        assert!(seps.iter().all(|&i| STREAM[i] == b','));
        assert_eq!(element_separators(b"{\"a\": [1, 2]}"), None);
        assert_eq!(element_separators(b" [ ] "), Some(vec![]));
    }

    #[test]
    fn each_element_gets_the_time_of_the_segment_that_ended_it() {
        let seps = element_separators(STREAM).unwrap();
        let segments = vec![
            (5.0, STREAM[..seps[0]].to_vec()),
            (20.0, STREAM[seps[0]..seps[1] + 4].to_vec()),
            (35.0, STREAM[seps[1] + 4..].to_vec()),
        ];
        assert_eq!(
            element_offsets(STREAM, &segments),
            Some(vec![5.0, 20.0, 35.0])
        );
        let whole = vec![(5.0, STREAM.to_vec())];
        assert_eq!(element_offsets(STREAM, &whole), None, "arrived at once");
        assert_eq!(
            element_offsets(b"[]", &[(1.0, b"[".to_vec()), (2.0, b"]".to_vec())]),
            None
        );
    }

    #[test]
    fn pieces_rejoin_to_the_bytes_and_carry_their_offsets() {
        let pieces = pieces(STREAM, &[5.0, 20.0]);
        assert_eq!(
            pieces.iter().map(|(at, _)| *at).collect::<Vec<_>>(),
            [5.0, 20.0, 20.0]
        );
        assert!(pieces[1].1.starts_with(b",\r\n{\"b\""));
        assert!(pieces[2].1.ends_with(b"}\n]"));
        let rejoined: Vec<u8> = pieces.iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(rejoined, STREAM);
    }
}
