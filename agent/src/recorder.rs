//! Turns reassembled HTTP exchanges into snapshot exchanges: decides whether a
//! host is recorded, redacts, writes atomically, prints the live line and keeps
//! the figures for the summary.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, SystemTime},
};

use globset::{Glob, GlobSet, GlobSetBuilder};
use llmsim_snapshot::{
    atomic::Owner,
    config::SnapshotConfig,
    ledger::Totals,
    model::{Body, Exchange, FORMAT_VERSION, Headers, ProcessInfo, Request, Response, Scheme},
    prices::PriceTable,
    provider::{self, Provider},
    redact::{Redactor, default_data_dir, redaction_key},
    store::SnapshotWriter,
    usage,
};
use serde::Serialize;
use thiserror::Error;

use crate::{connections::ConnectionExchange, http1};

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
    /// The snapshot directory or its config could not be used.
    #[error(transparent)]
    Store(#[from] llmsim_snapshot::store::StoreError),
    /// The snapshot's llmsim.toml is malformed.
    #[error(transparent)]
    Config(#[from] llmsim_snapshot::config::ConfigError),
    /// The per-machine redaction key could not be read or created.
    #[error(transparent)]
    Redaction(#[from] llmsim_snapshot::redact::RedactError),
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
    /// Exchanges with hosts that are not recorded.
    pub exchanges_ignored: u64,
    /// Bytes of exchange files written.
    pub bytes_written: u64,
    /// Files written, in order.
    pub files: Vec<PathBuf>,
    /// Calls, tokens and cost of what was written, under the built-in prices.
    pub usage: Totals,
}

/// Writes exchanges into one snapshot directory. Files are written (and
/// fsynced) on a thread of their own, so a burst of exchanges never holds up
/// the event loop that drains the kernel's ring buffer.
pub struct Recorder {
    redactor: Redactor,
    hosts: HostFilter,
    /// Wall clock minus monotonic clock, to date kernel timestamps.
    wall_offset: Duration,
    exchanges_ignored: u64,
    files: Option<mpsc::Sender<Exchange>>,
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
        // Under sudo the snapshot belongs to the user who ran it, not to root.
        let writer = SnapshotWriter::open_as(dir, Owner::invoking_user())?;
        let config = SnapshotConfig::load(dir)?;
        let redactor = Redactor::new(&config.redact, redaction_key(&default_data_dir()?)?)?;
        let since_epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let wall_offset = since_epoch.saturating_sub(Duration::from_nanos(monotonic_now_ns));
        let (files, queue) = mpsc::channel();
        let writer = thread::Builder::new()
            .name("llmsim-writer".into())
            .spawn(move || write_files(writer, &queue, quiet))
            .map_err(RecorderError::WriterThread)?;
        Ok(Self {
            redactor,
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

    /// Records one exchange if its host is wanted. `lost` flags it incomplete.
    /// `process` is the process that made it, as it was then.
    pub fn record(
        &mut self,
        done: ConnectionExchange,
        process: ProcessInfo,
        lost: Option<String>,
    ) -> Result<(), RecorderError> {
        let ConnectionExchange {
            sni,
            peer,
            exchange,
            ..
        } = done;
        let host = host_of(&exchange.request, sni.as_deref());
        if !self.hosts.records(&host) {
            self.exchanges_ignored += 1;
            return Ok(());
        }
        let mut exchange = self.to_snapshot(process, host, peer, exchange, lost);
        self.redactor.redact_exchange(&mut exchange);
        exchange.summary = usage::summarize(&exchange);
        // A send fails only once the writer stopped on an error: `finish` says which.
        match &self.files {
            Some(files) if files.send(exchange).is_ok() => Ok(()),
            _ => self
                .finish()
                .map(drop)
                .and(Err(RecorderError::WriterStopped)),
        }
    }

    fn to_snapshot(
        &self,
        process: ProcessInfo,
        host: String,
        peer: Option<std::net::SocketAddr>,
        exchange: http1::Exchange,
        lost: Option<String>,
    ) -> Exchange {
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
        let mut incomplete = lost.or(incomplete);
        let request_headers = headers(&request.headers);
        let request_body = body(&request_headers, &[(0.0, request.body)], &mut incomplete);
        let (response, ttfb_ms, duration_ms) = if let Some(r) = response {
            let response_headers = headers(&r.headers);
            let segments: Vec<(f64, Vec<u8>)> = r
                .body_segments
                .into_iter()
                .map(|(ts, bytes)| (ms(ts), bytes))
                .collect();
            let body = body(&response_headers, &segments, &mut incomplete);
            // A client that stops reading after a stream's last whole event
            // (openai-python closes at `[DONE]` without reading the chunked
            // terminator) saw the whole stream: nothing of it is missing.
            if incomplete.as_deref() == Some(http1::ENDED_IN_RESPONSE_BODY)
                && matches!(&body, Body::Sse { events, unterminated: None, .. } if !events.is_empty())
            {
                incomplete = None;
            }
            let response = Response {
                status: r.status,
                headers: response_headers,
                body,
            };
            (response, ms(r.first_byte_ns), ms(r.end_ns))
        } else {
            incomplete.get_or_insert_with(|| "no response was seen".into());
            let response = Response {
                status: 0,
                headers: Headers::default(),
                body: Body::Empty {
                    content_encoding: None,
                },
            };
            (response, 0.0, ms(request.end_ns))
        };
        let provider = Provider::from_host(&host);
        let endpoint = provider::Endpoint::classify(&request.method, &request.target);
        let json = request_body.json();
        let model = provider::model_of(endpoint, &request.target, json);
        let streamed =
            response.body.sse_events().is_some() || provider::is_streaming(endpoint, json);
        let started_at =
            time::OffsetDateTime::UNIX_EPOCH + self.wall_offset + Duration::from_nanos(start);
        Exchange {
            format_version: FORMAT_VERSION,
            seq: 0,
            provider,
            host,
            scheme: Scheme::Https,
            process,
            peer,
            started_at,
            ttfb_ms,
            duration_ms,
            incomplete,
            streamed,
            model,
            summary: None,
            request: Request {
                method: request.method,
                path: request.target,
                headers: request_headers,
                body: request_body,
            },
            response,
        }
    }
}

/// The writer thread: writes each exchange it is handed, in order, and keeps
/// the figures; stops at the first failure.
fn write_files(
    mut writer: SnapshotWriter,
    queue: &mpsc::Receiver<Exchange>,
    quiet: bool,
) -> Result<RecordStats, RecorderError> {
    let prices = PriceTable::builtin();
    let mut stats = RecordStats::default();
    for exchange in queue {
        let path = writer.write(&exchange)?;
        stats.usage.add_exchange(&exchange, &prices);
        stats.bytes_written += std::fs::metadata(&path).map_or(0, |m| m.len());
        stats.exchanges_written += 1;
        if exchange.incomplete.is_some() {
            stats.exchanges_incomplete += 1;
        }
        if !quiet {
            eprintln!("{}", live_line(&exchange));
        }
        stats.files.push(path);
    }
    Ok(stats)
}

fn headers(raw: &[(String, Vec<u8>)]) -> Headers {
    raw.iter()
        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

/// Decodes a body for storage; one that cannot be decoded is kept as its
/// bytes and the exchange says why.
fn body(headers: &Headers, segments: &[(f64, Vec<u8>)], incomplete: &mut Option<String>) -> Body {
    let (body, error) = Body::for_storage(
        headers.get("content-type"),
        headers.get("content-encoding"),
        segments,
    );
    if let Some(error) = error {
        incomplete.get_or_insert_with(|| format!("body could not be decoded: {error}"));
    }
    body
}

/// The host the client addressed: the Host header (authoritative for HTTP),
/// else the SNI, without a port.
fn host_of(request: &http1::Request, sni: Option<&str>) -> String {
    let header = request
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    let host = header
        .or_else(|| sni.map(str::to_owned))
        .unwrap_or_default();
    strip_port(&host).to_ascii_lowercase()
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
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

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("api.openai.com:443"), "api.openai.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("localhost"), "localhost");
    }
}
