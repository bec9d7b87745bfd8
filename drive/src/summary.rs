//! The end of a run: what was sent, how it went (answers as recorded, differing, errors by
//! kind, statuses), throughput and latency percentiles, the LLM calls served, and the
//! differences found, rendered as text or as one line of JSON.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Differing answers whose differences are shown; the others are only counted.
pub const SHOWN_DIFFERENCES: usize = 20;

/// Latency percentiles, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// The median.
    pub p50: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The slowest answer.
    pub max: f64,
}

/// The LLM calls the app made during the run, and who counted them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LlmCalls {
    /// How many.
    pub count: u64,
    /// `replayd` (served by the replayd that ran the app, `--drive`) or `recording`
    /// (the outbound calls the recording links to the requests sent).
    pub source: &'static str,
}

/// One differing answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResponseDiff {
    /// The inbound exchange's `seq`.
    pub seq: u64,
    /// Which copy of it (0 for the first).
    pub copy: u64,
    /// The request method.
    pub method: String,
    /// The request path.
    pub path: String,
    /// Each difference, rendered.
    pub differences: Vec<String>,
}

/// The summary of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// `regression` (each request once, in order), `closed-loop` or `open-loop`.
    pub mode: &'static str,
    /// Requests in flight at most (connections).
    pub concurrency: u32,
    /// The open-loop rate, requests per second.
    pub rate: Option<f64>,
    /// Finished requests.
    pub requests: u64,
    /// Answered as recorded.
    pub ok: u64,
    /// Answered, but not as recorded.
    pub differing: u64,
    /// Requests with no answer, by kind (`connect`, `timeout`, `http`).
    pub errors: BTreeMap<&'static str, u64>,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// From the first request's start to the last answer, in seconds.
    pub elapsed_s: f64,
    /// Finished requests per second.
    pub throughput_rps: f64,
    /// Latency of the answered requests.
    pub latency_ms: Latency,
    /// The LLM calls served.
    pub llm_calls: LlmCalls,
    /// The first [`SHOWN_DIFFERENCES`] differing answers.
    pub differences: Vec<ResponseDiff>,
}

impl Summary {
    /// Errors of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Whether any answer differed or any request failed, or nothing was sent.
    pub fn failed(&self) -> bool {
        self.differing > 0 || self.error_count() > 0 || self.requests == 0
    }

    /// The exit status: 0, or [`crate::EXIT_DIFFERENCES`].
    pub fn exit_code(&self) -> u8 {
        if self.failed() {
            crate::EXIT_DIFFERENCES
        } else {
            0
        }
    }

    /// Prints the summary on stdout: text, or with `json` one line of JSON.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.to_json());
        } else {
            print!("{self}");
        }
    }

    /// The summary as `--json` prints it: one line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl fmt::Display for Summary {
    /// Each differing answer's differences, then lines starting `drive: `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for diff in &self.differences {
            writeln!(
                f,
                "difference: exchange {} {} {} (copy {})",
                diff.seq, diff.method, diff.path, diff.copy
            )?;
            for difference in &diff.differences {
                for line in difference.lines() {
                    writeln!(f, "  {line}")?;
                }
            }
        }
        let hidden = self.differing.saturating_sub(self.differences.len() as u64);
        if hidden > 0 {
            writeln!(f, "drive: {hidden} more differing answers not shown")?;
        }
        writeln!(
            f,
            "drive: {} requests in {:.2} s ({:.1} req/s): {} as recorded, {} differing, {} errors",
            self.requests,
            self.elapsed_s,
            self.throughput_rps,
            self.ok,
            self.differing,
            self.error_count()
        )?;
        if !self.errors.is_empty() {
            writeln!(f, "drive: errors: {}", join_counts(&self.errors))?;
        }
        if !self.statuses.is_empty() {
            writeln!(f, "drive: statuses: {}", join_counts(&self.statuses))?;
        }
        let l = self.latency_ms;
        writeln!(
            f,
            "drive: latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.p50, l.p90, l.p99, l.max
        )?;
        let by = match self.llm_calls.source {
            "replayd" => "served by replayd",
            _ => "linked in the recording",
        };
        writeln!(f, "drive: {} LLM calls ({by})", self.llm_calls.count)
    }
}

fn join_counts<K: fmt::Display>(counts: &BTreeMap<K, u64>) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
