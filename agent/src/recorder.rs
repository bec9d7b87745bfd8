//! Capture's side of recording: decides whether a host is recorded, hands each
//! reassembled exchange to the snapshot's recorder ([`llmsim_snapshot::record`], which
//! builds, redacts and writes it) on a writer thread, links each inbound exchange to the
//! outbound calls made while serving it, prints the live line and keeps the figures for
//! the summary.
//!
//! The link rule ([`Links`]): an outbound exchange belongs to an inbound one when the same
//! process made it, its request started between the inbound request's first byte and the
//! inbound response's last, and its thread is the one that read the inbound request, or a
//! thread that had read no inbound request (a worker the handler handed the call to). A
//! thread that reads requests is taken to work for the request it read; an inbound
//! exchange is written once its response ended, after the calls made while serving it.

use std::{
    collections::{BTreeMap, VecDeque},
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
    store::seq_of,
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
    /// Of those, requests the targets served on an `--app-port` (inbound).
    pub inbound_exchanges_written: u64,
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
    files: Option<mpsc::Sender<(RawExchange<Vec<u8>>, Origin)>>,
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

    /// Whether exchanges with `host` are recorded (see [`HostFilter::records`]).
    pub fn records(&self, host: &str) -> bool {
        self.hosts.records(host)
    }

    /// The host [`Self::record`] drops `done` for, if it does: an exchange the target made
    /// (not one it served) over TLS, with a host that is not recorded (its `Host` or
    /// `:authority`, else its SNI; empty when it has none).
    pub fn unrecorded_host(&self, done: &ConnectionExchange) -> Option<String> {
        if done.inbound || is_plain_connection(done.ssl) {
            return None;
        }
        let host = record::addressed_host(
            &wire_headers(&done.exchange.request.headers),
            done.sni.as_deref(),
        );
        (!self.hosts.records(&host)).then_some(host)
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

    /// Records one exchange if its host is wanted, it was made over plain HTTP (only
    /// the destinations the user selected are read that way, whatever `Host` their
    /// requests name), or the target served it on an `--app-port` (whatever its host).
    /// `process` is the process that made it, as it was then.
    pub fn record(
        &mut self,
        done: ConnectionExchange,
        process: ProcessInfo,
    ) -> Result<(), RecorderError> {
        if self.unrecorded_host(&done).is_some() {
            self.exchanges_ignored += 1;
            return Ok(());
        }
        let origin = Origin::of(&done);
        let raw = self.raw_exchange(done, process);
        // A send fails only once the writer stopped on an error: `finish` says which.
        match &self.files {
            Some(files) if files.send((raw, origin)).is_ok() => Ok(()),
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
            inbound,
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
            direction: if inbound {
                Direction::Inbound
            } else {
                Direction::Outbound
            },
            scheme,
            http_version,
            incomplete,
        }
    }
}

/// Where and when an exchange happened in its process: what the link rule needs
/// beside what is stored.
#[derive(Clone, Copy, Debug)]
struct Origin {
    tgid: u32,
    /// The thread that made the request, or for an inbound one read it.
    tid: u32,
    /// Monotonic ns of the request's first byte.
    start_ns: u64,
    /// Monotonic ns of the last byte seen of either message.
    end_ns: u64,
    /// An outbound exchange whose thread had read an inbound request.
    on_serving_thread: bool,
}

impl Origin {
    fn of(done: &ConnectionExchange) -> Self {
        let request = &done.exchange.request;
        Self {
            tgid: done.tgid,
            tid: done.tid,
            start_ns: request.start_ns,
            end_ns: done
                .exchange
                .response
                .as_ref()
                .map_or(request.end_ns, |r| r.end_ns),
            on_serving_thread: done.on_serving_thread,
        }
    }
}

/// Most outbound exchanges kept for linking: a call older than the newest this many
/// is not linked to an inbound request still being served.
const LINKABLE: usize = 65_536;

/// The outbound exchanges written, newest last, for the link rule (see the module's
/// description).
#[derive(Default)]
struct Links {
    outbound: VecDeque<(Origin, u64)>,
}

impl Links {
    /// An outbound exchange was written under `seq`.
    fn written(&mut self, origin: Origin, seq: u64) {
        if self.outbound.len() == LINKABLE {
            self.outbound.pop_front();
        }
        self.outbound.push_back((origin, seq));
    }

    /// The seqs of the outbound exchanges made while serving `inbound`, in capture order.
    fn of(&self, inbound: &Origin) -> Vec<u64> {
        self.outbound
            .iter()
            .filter(|(call, _)| {
                call.tgid == inbound.tgid
                    && (inbound.start_ns..=inbound.end_ns).contains(&call.start_ns)
                    && (call.tid == inbound.tid || !call.on_serving_thread)
            })
            .map(|&(_, seq)| seq)
            .collect()
    }
}

/// The writer thread: builds and writes each exchange it is handed, in order, links
/// inbound exchanges to the outbound ones written before them, and keeps the figures;
/// stops at the first failure.
fn write_files(
    mut recorder: SnapshotRecorder,
    queue: &mpsc::Receiver<(RawExchange<Vec<u8>>, Origin)>,
    quiet: bool,
) -> Result<RecordStats, RecorderError> {
    let prices = PriceTable::builtin();
    let mut stats = RecordStats::default();
    let mut links = Links::default();
    for (raw, origin) in queue {
        let mut exchange = recorder.exchange(raw);
        accept_a_stream_read_to_its_last_event(&mut exchange);
        if exchange.direction == Direction::Inbound {
            exchange.linked = links.of(&origin);
        }
        let path = recorder.write(&exchange)?;
        match exchange.direction {
            Direction::Inbound => stats.inbound_exchanges_written += 1,
            Direction::Outbound => {
                if let Some(seq) = path
                    .file_name()
                    .and_then(|name| seq_of(&name.to_string_lossy()))
                {
                    links.written(origin, seq);
                }
            }
        }
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

/// `openai POST /v1/chat/completions gpt-4o 200 812ms streamed pid 4242 (python3)`; an
/// inbound one: `inbound POST /triage - 200 2410ms not-streamed pid 4242 (python3) linked 3`.
fn live_line(exchange: &Exchange) -> String {
    let origin: &dyn std::fmt::Display = match exchange.direction {
        Direction::Inbound => &"inbound",
        Direction::Outbound => &exchange.provider,
    };
    let mut line = format!(
        "{} {} {} {} {} {:.0}ms",
        origin,
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
    if exchange.direction == Direction::Inbound {
        let _ = write!(line, " linked {}", exchange.linked.len());
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

    fn origin(process: u32, thread: u32, start_ns: u64, on_serving_thread: bool) -> Origin {
        Origin {
            tgid: process,
            tid: thread,
            start_ns,
            end_ns: start_ns + 10,
            on_serving_thread,
        }
    }

    #[test]
    fn an_inbound_exchange_links_the_calls_its_process_made_while_serving_it() {
        let mut links = Links::default();
        // Two requests served at once by threads 11 and 12 of process 1.
        let first = Origin {
            end_ns: 200,
            ..origin(1, 11, 100, false)
        };
        let second = Origin {
            end_ns: 250,
            ..origin(1, 12, 150, false)
        };
        links.written(origin(1, 11, 90, true), 1); // before the first request
        links.written(origin(1, 11, 110, true), 2);
        links.written(origin(1, 12, 160, true), 3);
        links.written(origin(1, 13, 170, false), 4); // a worker thread
        links.written(origin(2, 11, 120, true), 5); // another process
        links.written(origin(1, 11, 190, true), 6);
        links.written(origin(1, 12, 240, true), 7);
        assert_eq!(links.of(&first), [2, 4, 6]);
        assert_eq!(links.of(&second), [3, 4, 7]);
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
