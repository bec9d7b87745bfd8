//! Capture's side of recording: decides whether a host is recorded, hands each
//! reassembled exchange to the snapshot's recorder ([`llmsim_snapshot::record`], which
//! builds, redacts and writes it) on a writer thread, prints the live line and keeps the
//! figures for the summary.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, SystemTime},
};

use globset::{Glob, GlobSet, GlobSetBuilder};
use llmsim_ebpf_common::is_plain_connection;
use llmsim_snapshot::{
    ledger::Totals,
    model::{Body, Direction, Exchange, HttpVersion, ProcessInfo, Scheme, SseEvent},
    prices::PriceTable,
    provider::Provider,
    record::{self, RawExchange, RawRequest, RawResponse, RecordError, SnapshotRecorder},
};
use serde::Serialize;
use thiserror::Error;

use crate::{
    connections::{ConnectionExchange, loss_reason_of},
    http1,
};

/// Failures setting up or writing the snapshot.
#[derive(Debug, Error)]
pub enum RecorderError {
    /// A `--host` pattern is not a valid glob.
    #[error("invalid --host pattern `{pattern}`")]
    HostPattern {
        /// The pattern.
        pattern: String,
        /// The cause.
        #[source]
        source: globset::Error,
    },
    /// The snapshot directory, its config or the redaction key could not be used.
    #[error(transparent)]
    Open(#[from] RecordError),
    /// An exchange file could not be written.
    #[error(transparent)]
    Store(#[from] llmsim_snapshot::store::StoreError),
    /// The thread that writes files could not be started.
    #[error("starting the snapshot writer thread failed")]
    WriterThread(#[source] std::io::Error),
    /// The thread that writes files stopped unexpectedly.
    #[error("the snapshot writer thread stopped")]
    WriterStopped,
}

/// Which hosts are recorded.
pub struct HostFilter {
    extra: GlobSet,
    any: bool,
}

impl HostFilter {
    /// Known provider hosts plus `patterns`, or everything with `any`.
    pub fn new(patterns: &[String], any: bool) -> Result<Self, RecorderError> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = Glob::new(&pattern.to_ascii_lowercase()).map_err(|source| {
                RecorderError::HostPattern {
                    pattern: pattern.clone(),
                    source,
                }
            })?;
            builder.add(glob);
        }
        let extra = builder
            .build()
            .map_err(|source| RecorderError::HostPattern {
                pattern: patterns.join(","),
                source,
            })?;
        Ok(Self { extra, any })
    }

    /// Whether exchanges with `host` are recorded.
    pub fn records(&self, host: &str) -> bool {
        self.any || Provider::from_host(host) != Provider::Generic || self.extra.is_match(host)
    }
}

/// What the capture recorded, for the summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecordStats {
    /// Exchange files written.
    pub exchanges_written: u64,
    /// Of those, flagged incomplete.
    pub exchanges_incomplete: u64,
    /// Of those, flagged because the kernel could not deliver some of their
    /// bytes, per drop reason (`ring_full`, ...); absent reasons are 0.
    pub incomplete_by_loss: BTreeMap<&'static str, u64>,
    /// Of those, made over HTTP/2.
    pub http2_exchanges_written: u64,
    /// Exchanges with hosts that are not recorded.
    pub exchanges_ignored: u64,
    /// Bytes of exchange files written.
    pub bytes_written: u64,
    /// Files written, in order.
    pub files: Vec<PathBuf>,
    /// Calls, tokens and cost of what was written, under the built-in prices.
    pub usage: Totals,
}

/// Records exchanges into one snapshot directory. Exchanges are built, redacted and
/// written (and fsynced) on a thread of their own, so a burst of exchanges never holds up
/// the event loop that drains the kernel's ring buffer.
pub struct Recorder {
    hosts: HostFilter,
    /// Wall clock minus monotonic clock, to date kernel timestamps.
    wall_offset: Duration,
    exchanges_ignored: u64,
    files: Option<mpsc::Sender<RawExchange<Vec<u8>>>>,
    writer: Option<thread::JoinHandle<Result<RecordStats, RecorderError>>>,
}

impl Recorder {
    /// Opens (creating, or appending to) the snapshot directory.
    pub fn open(
        dir: &Path,
        hosts: HostFilter,
        monotonic_now_ns: u64,
        quiet: bool,
    ) -> Result<Self, RecorderError> {
        let recorder = SnapshotRecorder::open(dir, None)?;
        let since_epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let wall_offset = since_epoch.saturating_sub(Duration::from_nanos(monotonic_now_ns));
        let (files, queue) = mpsc::channel();
        let writer = thread::Builder::new()
            .name("llmsim-writer".into())
            .spawn(move || write_files(recorder, &queue, quiet))
            .map_err(RecorderError::WriterThread)?;
        Ok(Self {
            hosts,
            wall_offset,
            exchanges_ignored: 0,
            files: Some(files),
            writer: Some(writer),
        })
    }

    /// Waits until every exchange handed over is on disk; the figures.
    pub fn finish(&mut self) -> Result<RecordStats, RecorderError> {
        self.files = None;
        let stats = match self.writer.take().map(thread::JoinHandle::join) {
            Some(Ok(result)) => result?,
            Some(Err(_)) => return Err(RecorderError::WriterStopped),
            None => RecordStats::default(),
        };
        Ok(RecordStats {
            exchanges_ignored: self.exchanges_ignored,
            ..stats
        })
    }

    /// Records one exchange if its host is wanted, or it was made over plain HTTP (only
    /// the destinations the user selected are read that way, whatever `Host` their
    /// requests name). `process` is the process that made it, as it was then.
    pub fn record(
        &mut self,
        done: ConnectionExchange,
        process: ProcessInfo,
    ) -> Result<(), RecorderError> {
        let raw = self.raw_exchange(done, process);
        if raw.scheme != Scheme::Http && !self.hosts.records(&raw.host()) {
            self.exchanges_ignored += 1;
            return Ok(());
        }
        // A send fails only once the writer stopped on an error: `finish` says which.
        match &self.files {
            Some(files) if files.send(raw).is_ok() => Ok(()),
            _ => self
                .finish()
                .map(drop)
                .and(Err(RecorderError::WriterStopped)),
        }
    }

    /// The exchange as the kernel's probes saw it: TLS, or plain HTTP from the socket
    /// syscalls when its connection id says so, timed from the request's
    /// first write, dated by the wall clock, with its connection's HTTP version and the
    /// response's trailers (HTTP/2 trailers, gRPC's `grpc-status` among them, or a
    /// chunked HTTP/1.1 body's).
    fn raw_exchange(&self, done: ConnectionExchange, process: ProcessInfo) -> RawExchange<Vec<u8>> {
        let scheme = if is_plain_connection(done.ssl) {
            Scheme::Http
        } else {
            Scheme::Https
        };
        let ConnectionExchange {
            sni,
            peer,
            http_version,
            exchange,
            ..
        } = done;
        let http1::Exchange {
            request,
            response,
            incomplete,
        } = exchange;
        let start = request.start_ns;
        #[expect(
            clippy::cast_precision_loss,
            reason = "durations are far below 2^52 ns"
        )]
        let ms = |ns: u64| ns.saturating_sub(start) as f64 / 1e6;
        let duration_ms = ms(response.as_ref().map_or(request.end_ns, |r| r.end_ns));
        let response = response.map(|r| RawResponse {
            status: r.status,
            headers: wire_headers(&r.headers),
            first_byte_ms: ms(r.first_byte_ns),
            body: r
                .body_segments
                .into_iter()
                .map(|(ts, bytes)| (ms(ts), bytes))
                .collect(),
            trailers: wire_headers(&r.trailers),
        });
        RawExchange {
            request: RawRequest {
                headers: wire_headers(&request.headers),
                method: request.method,
                target: request.target,
                body: request.body,
            },
            response,
            started_at: time::OffsetDateTime::UNIX_EPOCH
                + self.wall_offset
                + Duration::from_nanos(start),
            duration_ms,
            sni,
            peer,
            process,
            direction: Direction::Outbound,
            scheme,
            http_version,
            incomplete,
        }
    }
}

/// The writer thread: builds and writes each exchange it is handed, in order, and keeps
/// the figures; stops at the first failure.
fn write_files(
    mut recorder: SnapshotRecorder,
    queue: &mpsc::Receiver<RawExchange<Vec<u8>>>,
    quiet: bool,
) -> Result<RecordStats, RecorderError> {
    let prices = PriceTable::builtin();
    let mut stats = RecordStats::default();
    for raw in queue {
        let mut exchange = recorder.exchange(raw);
        accept_a_stream_read_to_its_last_event(&mut exchange);
        let path = recorder.write(&exchange)?;
        stats.usage.add_exchange(&exchange, &prices);
        stats.bytes_written += std::fs::metadata(&path).map_or(0, |m| m.len());
        stats.exchanges_written += 1;
        if let Some(why) = &exchange.incomplete {
            stats.exchanges_incomplete += 1;
            if let Some(reason) = loss_reason_of(why) {
                *stats.incomplete_by_loss.entry(reason.name()).or_default() += 1;
            }
        }
        if exchange.http_version == HttpVersion::Http2 {
            stats.http2_exchanges_written += 1;
        }
        if !quiet {
            eprintln!("{}", live_line(&exchange));
        }
        stats.files.push(path);
    }
    Ok(stats)
}

/// A client that stops reading after a stream's last event (openai-python closes at
/// `[DONE]` without reading the chunked terminator) saw the whole stream: nothing of it is
/// missing, though the reassembler saw the connection end inside the response body. A
/// stream whose last event does not end it was cut off (the client was killed, or gave up)
/// and stays flagged. This belongs to capture, which sees only what the client read;
/// replayd reads every answer it forwards to its end, so a body that ends early there was
/// cut off.
fn accept_a_stream_read_to_its_last_event(exchange: &mut Exchange) {
    if exchange.incomplete.as_deref() == Some(http1::ENDED_IN_RESPONSE_BODY)
        && matches!(
            &exchange.response.body,
            Body::Sse { events, unterminated: None, .. }
                if events.last().is_some_and(ends_the_stream)
        )
    {
        exchange.incomplete = None;
    }
}

/// Whether `event` is the last one its provider sends: `data: [DONE]` (chat completions,
/// and every server compatible with them), `response.completed`, `response.failed` or
/// `response.incomplete` (the Responses API), `message_stop` or `error` (Anthropic), or a
/// Gemini chunk with a `finishReason` (Gemini sends no end marker).
fn ends_the_stream(event: &SseEvent) -> bool {
    event.data == "[DONE]"
        || matches!(
            event.event.as_deref(),
            Some(
                "message_stop"
                    | "error"
                    | "response.completed"
                    | "response.failed"
                    | "response.incomplete"
            )
        )
        || serde_json::from_str::<serde_json::Value>(&event.data).is_ok_and(|chunk| {
            chunk["candidates"]
                .as_array()
                .is_some_and(|candidates| candidates.iter().any(|c| c["finishReason"].is_string()))
        })
}

fn wire_headers(fields: &http1::Headers) -> llmsim_snapshot::model::Headers {
    record::headers(fields.iter().map(|(name, value)| (name, value)))
}

/// `openai POST /v1/chat/completions gpt-4o 200 812ms streamed pid 4242 (python3)`
fn live_line(exchange: &Exchange) -> String {
    let mut line = format!(
        "{} {} {} {} {} {:.0}ms",
        exchange.provider,
        exchange.request.method,
        exchange.request.path.split('?').next().unwrap_or_default(),
        exchange.model.as_deref().unwrap_or("-"),
        exchange.response.status,
        exchange.duration_ms,
    );
    line.push_str(if exchange.streamed {
        " streamed"
    } else {
        " not-streamed"
    });
    let _ = write!(line, " pid {}", exchange.process.pid);
    if !exchange.process.comm.is_empty() {
        let _ = write!(line, " ({})", exchange.process.comm);
    }
    if let Some(why) = &exchange.incomplete {
        let _ = write!(line, " INCOMPLETE ({why})");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_providers_and_patterns_are_recorded() {
        let filter = HostFilter::new(&["*.openai.azure.com".into()], false).unwrap();
        assert!(filter.records("api.openai.com"));
        assert!(filter.records("myres.openai.azure.com"));
        assert!(!filter.records("example.com"));
        assert!(HostFilter::new(&[], true).unwrap().records("example.com"));
    }

    fn event(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            offset_ms: 0.0,
            event: event.map(str::to_owned),
            data: data.to_owned(),
            id: None,
            retry: None,
            wire: None,
        }
    }

    #[test]
    fn only_a_providers_last_event_ends_a_stream() {
        for last in [
            event(None, "[DONE]"),
            event(Some("message_stop"), r#"{"type":"message_stop"}"#),
            event(Some("error"), r#"{"type":"error"}"#),
            event(Some("response.completed"), "{}"),
            event(Some("response.failed"), "{}"),
            event(Some("response.incomplete"), "{}"),
            event(None, r#"{"candidates":[{"finishReason":"STOP"}]}"#),
        ] {
            assert!(ends_the_stream(&last), "{last:?}");
        }
        for middle in [
            event(None, r#"{"choices":[{"delta":{"content":"w0 "}}]}"#),
            event(Some("content_block_delta"), "{}"),
            event(Some("response.output_text.delta"), "{}"),
            event(None, r#"{"candidates":[{"content":{}}]}"#),
            event(None, "not json"),
        ] {
            assert!(!ends_the_stream(&middle), "{middle:?}");
        }
    }
}
