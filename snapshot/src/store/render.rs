//! The exchange file's text form: JSON indented by two spaces, except that an
//! array of plain values stays on one line. A header is then one line
//! (`["content-type", "application/json"]`) and so is an embedding vector, so
//! a diff of two recordings shows one line per changed field.

use serde_json::Value;

/// Renders `value` followed by a newline.
pub(super) fn render(value: &Value) -> String {
    let mut out = String::new();
    write(&mut out, value, 0);
    out.push('\n');
    out
}

fn write(out: &mut String, value: &Value, depth: usize) {
    match value {
        Value::Array(items) if items.iter().all(is_plain) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&item.to_string());
            }
            out.push(']');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                open_line(out, i, depth + 1);
                write(out, item, depth + 1);
            }
            close(out, depth, ']');
        }
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                open_line(out, i, depth + 1);
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push_str(": ");
                write(out, item, depth + 1);
            }
            close(out, depth, '}');
        }
        plain => out.push_str(&plain.to_string()),
    }
}

fn is_plain(value: &Value) -> bool {
    !matches!(value, Value::Array(_) | Value::Object(_))
}

fn open_line(out: &mut String, index: usize, depth: usize) {
    if index > 0 {
        out.push(',');
    }
    out.push('\n');
    indent(out, depth);
}

fn close(out: &mut String, depth: usize, bracket: char) {
    out.push('\n');
    indent(out, depth);
    out.push(bracket);
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn layout() {
        let value = json!({
            "a": 1,
            "headers": [["content-type", "application/json"], ["x", "1"]],
            "empty": {},
            "none": [],
            "nested": {"s": "q\"uote\n", "f": 1.5, "n": null},
            "mixed": [1, {"b": true}],
        });
        let expected = r#"{
  "a": 1,
  "headers": [
    ["content-type", "application/json"],
    ["x", "1"]
  ],
  "empty": {},
  "none": [],
  "nested": {
    "s": "q\"uote\n",
    "f": 1.5,
    "n": null
  },
  "mixed": [
    1,
    {
      "b": true
    }
  ]
}
"#;
        assert_eq!(render(&value), expected);
    }

    #[test]
    fn round_trips() {
        let value = json!({"z": [0.1, -2e-9, 18_446_744_073_709_551_615_u64], "k\u{e9}y": "\u{1f600}\t", "a": [[], [{}]]});
        let back: Value = serde_json::from_str(&render(&value)).unwrap();
        assert_eq!(back, value);
    }
}
