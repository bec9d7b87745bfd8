//! Loss accounting without holes: each way the kernel can fail to deliver plaintext is forced
//! for real (a buffer whose pages are gone when the return probe copies it, a ring buffer too
//! small for a 2 MiB write, over TLS and over plain HTTP, a call table too small for eight
//! waiting reads). Every exchange that lost a byte is written flagged `incomplete` with its
//! reason, every other one is byte-for-byte what went over the wire, and the summary's counts
//! equal what was forced: the plaintext the agent received plus the bytes the kernel says it
//! lost is exactly what the client moved, the calls lost whole that the agent saw as skipped
//! sequence numbers are those the kernel counted, and the bytes attributed to connections are
//! the bytes lost.

mod capture_support;

use std::ffi::OsString;

use capture_support::{Agent, Finished, b64, body_bytes, command_args, exchanges, figure};
use llmsim_tests::{FakeProvider, FakeProviderConfig, TestCa, TestNetns, privileged};
use serde_json::Value;

/// Where the plain fake provider serves, as a local model server does.
const LOCAL_SERVER: &str = "127.0.0.1:11434";
const REASONS: [&str; 4] = ["ring_full", "copy_failed", "chunk_cap", "missing_entry"];
const COPY_FAILED: &str = "request bytes lost: the kernel could not deliver part of a TLS read or write: the process's buffer could not be read";
const RING_FULL: &str =
    "the kernel could not deliver part of a TLS read or write: the ring buffer was full";
const CALL_TABLE: &str = "the kernel could not deliver part of a TLS read or write: the table of calls in progress was full";

/// One forced capture of `loss_client.py MODE`.
struct Run {
    finished: Finished,
    /// The client's report.
    report: Value,
    /// The exchange files, in order.
    exchanges: Vec<Value>,
    /// What the provider received, in order.
    provider_bodies: Vec<Vec<u8>>,
}

fn run(mode: &str, flags: &[&str]) -> Run {
    run_against(mode, flags, FakeProvider::start)
}

/// [`run`] against the provider `start` starts.
fn run_against(
    mode: &str,
    flags: &[&str],
    start: impl FnOnce(&TestNetns, &TestCa) -> FakeProvider,
) -> Run {
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
    args.extend(command_args(&netns, "loss_client.py"));
    args.push(mode.into());
    let finished = Agent::start(out.path(), &ca, &args).finish();
    assert!(finished.status.success(), "{}", finished.dump());
    let report: Value = serde_json::from_str(finished.command_stdout().join("\n").trim())
        .unwrap_or_else(|e| panic!("client report ({e})\n{}", finished.dump()));
    Run {
        exchanges: exchanges(out.path()),
        provider_bodies: provider
            .requests()
            .into_iter()
            .map(|r| r.body_bytes)
            .collect(),
        report,
        finished,
    }
}

impl Run {
    fn summary(&self) -> &Value {
        &self.finished.summary
    }

    fn loss(&self, reason: &str, field: &str) -> u64 {
        self.summary()["losses"][reason][field]
            .as_u64()
            .unwrap_or_else(|| panic!("losses.{reason}.{field}\n{}", self.finished.dump()))
    }

    fn connections(&self, field: &str) -> u64 {
        figure(&self.summary()["connections"], field)
    }

    /// The client's requests, as sent.
    fn sent(&self) -> Vec<&Value> {
        self.report["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .collect()
    }

    /// Asserts that the provider received every request whole: the client was not disturbed.
    fn assert_provider_received_everything(&self) {
        let sent: Vec<Vec<u8>> = self.sent().iter().map(|r| b64(&r["body_b64"])).collect();
        let mut received = self.provider_bodies.clone();
        received.sort();
        let mut expected = sent;
        expected.sort();
        assert!(received == expected, "the provider received other bodies");
    }

    /// Asserts that `exchange`, written whole, holds exactly the bytes of the client's request
    /// `sent`: its request body and its response body.
    fn assert_whole(&self, exchange: &Value, sent: &Value) {
        assert!(
            exchange["incomplete"].is_null(),
            "flagged {}\n{}",
            exchange["incomplete"],
            self.finished.dump()
        );
        assert!(
            body_bytes(&exchange["request"]["body"]) == b64(&sent["body_b64"]),
            "the request body differs from what was sent"
        );
        let response = &exchange["response"]["body"];
        match response["events"].as_array() {
            Some(events) => {
                let recorded: Vec<&str> =
                    events.iter().filter_map(|e| e["data"].as_str()).collect();
                let received: Vec<&str> = sent["events"]
                    .as_array()
                    .expect("events")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                assert_eq!(
                    recorded, received,
                    "the stream differs from what was received"
                );
            }
            None => assert!(
                body_bytes(response) == b64(&sent["response_b64"]),
                "the response body differs from what was received"
            ),
        }
    }

    /// Asserts that every exchange is written whole, byte-for-byte one of the requests sent,
    /// or flagged with `reason`; returns how many are whole.
    fn assert_whole_or_flagged(&self, reason: &str) -> usize {
        let sent = self.sent();
        let mut whole = 0;
        for (i, exchange) in self.exchanges.iter().enumerate() {
            if exchange["incomplete"].is_null() {
                whole += 1;
                let request = body_bytes(&exchange["request"]["body"]);
                let source = sent
                    .iter()
                    .find(|s| b64(&s["body_b64"]) == request)
                    .unwrap_or_else(|| panic!("exchange {i} matches no request sent"));
                self.assert_whole(exchange, source);
            } else {
                assert!(
                    exchange["incomplete"]
                        .as_str()
                        .is_some_and(|why| why.ends_with(reason)),
                    "exchange {i}: {}\n{}",
                    exchange["incomplete"],
                    self.finished.dump()
                );
            }
        }
        whole
    }

    /// Asserts what a ring buffer too small for the 2 MiB request of `ring` leaves: each
    /// exchange is written whole, byte-for-byte, or flagged for the full ring, at least one
    /// is not whole, and the accounting holds.
    fn assert_ring_full(&self) {
        self.assert_provider_received_everything();
        let sent = self.sent();
        assert!(
            self.loss("ring_full", "bytes") > 0,
            "{}",
            self.finished.dump()
        );
        let whole = self.assert_whole_or_flagged(RING_FULL);
        // The 2 MiB request cannot have come through a 64 KiB ring: its exchange is flagged, or,
        // when its head was lost too, not written at all.
        assert!(whole < sent.len(), "{}", self.finished.dump());
        self.assert_accounting("ring_full");
    }

    /// Asserts the accounting identities: received + lost = moved; calls lost whole as seen by
    /// the agent = as counted by the kernel; bytes attributed to connections = bytes lost; the
    /// files flagged per reason = the summary's count; and only `forced` lost anything.
    fn assert_accounting(&self, forced: &str) {
        let lost: u64 = REASONS.iter().map(|r| self.loss(r, "bytes")).sum();
        // A call whose entry was lost has no known length.
        if forced != "missing_entry" {
            assert_eq!(
                self.connections("plaintext_bytes") + lost,
                self.report["tls_bytes"].as_u64().expect("tls_bytes"),
                "plaintext received plus lost is what the client moved\n{}",
                self.finished.dump()
            );
        }
        let whole: u64 = REASONS.iter().map(|r| self.loss(r, "whole_calls")).sum();
        assert_eq!(
            self.connections("whole_calls_lost"),
            whole,
            "calls lost whole, seen by the agent and counted by the kernel\n{}",
            self.finished.dump()
        );
        assert_eq!(
            self.connections("lost_bytes_attributed"),
            lost,
            "every byte lost is attributed to its connection\n{}",
            self.finished.dump()
        );
        for reason in REASONS {
            let flagged = self
                .exchanges
                .iter()
                .filter(|e| {
                    e["incomplete"].as_str().is_some_and(|why| {
                        why.ends_with(match reason {
                            "ring_full" => RING_FULL,
                            "copy_failed" => COPY_FAILED,
                            "missing_entry" => CALL_TABLE,
                            _ => "one call was larger than 64 MiB",
                        })
                    })
                })
                .count() as u64;
            assert_eq!(
                self.loss(reason, "exchanges_incomplete"),
                flagged,
                "{reason}: exchanges flagged\n{}",
                self.finished.dump()
            );
            if reason != forced {
                assert_eq!(
                    self.loss(reason, "calls"),
                    0,
                    "{reason}\n{}",
                    self.finished.dump()
                );
            }
        }
        assert_eq!(
            figure(self.summary(), "exchanges_incomplete"),
            self.exchanges
                .iter()
                .filter(|e| !e["incomplete"].is_null())
                .count() as u64,
            "{}",
            self.finished.dump()
        );
    }
}

#[test]
fn a_buffer_the_kernel_cannot_read_flags_its_exchange_and_is_counted() {
    if !privileged("capture loss accounting (copy failure)") {
        return;
    }
    let run = run("copy", &[]);
    run.assert_provider_received_everything();
    let sent = run.sent();
    assert_eq!(run.exchanges.len(), 3, "{}", run.finished.dump());
    // The first and the last body were dropped from memory inside SSL_write.
    for i in [0, 2] {
        assert_eq!(
            run.exchanges[i]["incomplete"].as_str(),
            Some(COPY_FAILED),
            "{}",
            run.finished.dump()
        );
    }
    run.assert_whole(&run.exchanges[1], sent[1]);
    assert_eq!(
        [
            run.loss("copy_failed", "calls"),
            run.loss("copy_failed", "whole_calls"),
            run.loss("copy_failed", "chunks"),
            run.loss("copy_failed", "bytes"),
            run.loss("copy_failed", "exchanges_incomplete"),
        ],
        [2, 2, 2, 5000 + 12000, 2],
        "{}",
        run.finished.dump()
    );
    run.assert_accounting("copy_failed");
    assert!(
        run.finished
            .stderr
            .iter()
            .any(|l| l.starts_with("llmsim-agent: copy_failed: 2 calls lost plaintext (2 whole), 2 chunks, 17000 bytes; 2 exchanges flagged incomplete")),
        "{}",
        run.finished.dump()
    );
}

#[test]
fn a_ring_buffer_too_small_flags_what_it_dropped_and_counts_every_byte() {
    if !privileged("capture loss accounting (ring buffer full)") {
        return;
    }
    let run = run("ring", &["--ring-size", "65536"]);
    run.assert_ring_full();
}

#[test]
fn a_ring_buffer_too_small_flags_what_it_dropped_of_a_plain_http_connection() {
    if !privileged("capture loss accounting (ring buffer full, plain HTTP)") {
        return;
    }
    let run = run_against(
        "plain-ring",
        &["--ring-size", "65536", "--host", LOCAL_SERVER],
        |netns, _| FakeProvider::start_plain(netns, LOCAL_SERVER, &FakeProviderConfig::default()),
    );
    assert!(
        run.exchanges.iter().all(|e| e["scheme"] == "http"),
        "every exchange is a plain one\n{}",
        run.finished.dump()
    );
    run.assert_ring_full();
}

#[test]
fn a_call_table_too_small_flags_the_calls_it_lost() {
    if !privileged("capture loss accounting (call table full)") {
        return;
    }
    let run = run("table", &["--call-table-size", "1"]);
    run.assert_provider_received_everything();
    let sent = run.sent();
    let lost = run.loss("missing_entry", "calls");
    assert!(
        lost > 0,
        "eight waiting reads in a one-entry table\n{}",
        run.finished.dump()
    );
    assert_eq!(lost, run.loss("missing_entry", "whole_calls"));
    let whole = run.assert_whole_or_flagged(CALL_TABLE);
    // Every call lost carried bytes of one of the eight exchanges: that one is flagged, or,
    // when its request was lost, not written at all.
    assert!(
        whole < sent.len(),
        "{whole} of {} written whole\n{}",
        sent.len(),
        run.finished.dump()
    );
    run.assert_accounting("missing_entry");
}
