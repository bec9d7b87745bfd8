//! replayd's DNS responder. The cgroup hooks send the target's port-53 traffic here; this
//! module answers A and AAAA queries for the hosts replay answers for (the recorded ones and
//! every known provider host, listed by the caller) with the addresses the connect hook
//! redirects (TTL 5, so nothing stale outlives a run), and either forwards every other
//! query unchanged to the original resolver or answers NXDOMAIN (`--no-network`). It
//! serves UDP and TCP (several length-prefixed queries per connection, answered in order).
//! The wire format is hickory-proto's; malformed packets are counted and dropped (UDP) or
//! close the connection (TCP), and never stop the server.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::io_error::{RESOURCE_BACK_OFF, is_resource_exhaustion, is_transient};

/// TTL of every answer replayd gives for a host it answers for.
pub const ANSWER_TTL: u32 = 5;
/// How long a forwarded query waits for the original resolver by default.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a TCP connection may sit idle between queries before it is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most UDP queries forwarded at once; beyond that a query gets SERVFAIL at once.
pub const MAX_FORWARDS_IN_FLIGHT: usize = 256;
/// Largest UDP datagram read (EDNS answers from upstream can exceed 512 bytes).
const MAX_UDP: usize = 65_535;
/// EDNS payload size advertised in local answers (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

/// Errors of the DNS responder.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The resolver configuration could not be read.
    #[error("cannot read {path}")]
    ReadResolvConf {
        /// The file, usually /etc/resolv.conf.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The resolver configuration names no usable nameserver.
    #[error("{path} names no usable nameserver")]
    NoNameserver {
        /// The file.
        path: PathBuf,
    },
    /// Receiving on the UDP socket failed in a way that is not about one client.
    #[error("cannot receive DNS queries")]
    Recv {
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// Accepting on the TCP listener failed in a way that is not about one client.
    #[error("cannot accept DNS connections")]
    Accept {
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// Talking to the original resolver failed.
    #[error("upstream resolver {upstream} failed")]
    Upstream {
        /// The resolver.
        upstream: SocketAddr,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The original resolver did not answer in time.
    #[error("upstream resolver {upstream} did not answer within {timeout:?}")]
    UpstreamTimeout {
        /// The resolver.
        upstream: SocketAddr,
        /// How long replayd waited.
        timeout: Duration,
    },
    /// An answer could not be encoded.
    #[error("cannot encode a DNS answer")]
    Encode {
        /// The underlying hickory-proto error.
        #[source]
        source: hickory_proto::ProtoError,
    },
}

/// The host names replay answers for (lowercase, without a trailing dot) and the loopback
/// address the connect hook redirects for each. A queries get that address; AAAA queries
/// get its IPv4-mapped form (`::ffff:127.77.0.1`), which an IPv6 socket connects to through
/// the same redirect, so a client that asks only for IPv6 still reaches replayd, and the
/// address stays on loopback even were the redirect gone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostAnswers {
    hosts: HashMap<String, Ipv4Addr>,
}

impl HostAnswers {
    /// No hosts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a host. The name is lowercased and a trailing dot dropped.
    pub fn insert(&mut self, name: &str, addr: Ipv4Addr) {
        self.hosts.insert(normalise(name), addr);
    }

    /// The address for `name`, case-insensitively.
    pub fn get(&self, name: &str) -> Option<Ipv4Addr> {
        self.hosts.get(&normalise(name)).copied()
    }

    /// How many hosts there are.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// What happens to queries for names replay does not answer for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Forward the query bytes unchanged to this resolver (the one from /etc/resolv.conf)
    /// and relay its answer.
    Upstream(SocketAddr),
    /// Answer NXDOMAIN (`--no-network`).
    NxDomain,
}

/// Counters of what the responder did, for the end-of-run report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Well-formed queries received.
    pub queries: u64,
    /// Queries answered from the host list.
    pub answered: u64,
    /// Queries forwarded to the upstream resolver and answered by it.
    pub forwarded: u64,
    /// Queries answered NXDOMAIN because of [`Fallback::NxDomain`].
    pub nxdomain: u64,
    /// Forwarded queries the upstream resolver failed or did not answer (answered SERVFAIL).
    pub upstream_failures: u64,
    /// Packets that were not DNS queries, dropped (UDP) or ending their connection (TCP).
    pub malformed: u64,
}

#[derive(Default)]
struct Counters {
    queries: AtomicU64,
    answered: AtomicU64,
    forwarded: AtomicU64,
    nxdomain: AtomicU64,
    upstream_failures: AtomicU64,
    malformed: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Which transport a query came in on; forwarding uses the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// What to do with one incoming packet.
enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Forward the packet to this resolver; `Message` is the parsed query, for SERVFAIL.
    Forward(SocketAddr, Message),
    /// Not a DNS query.
    Malformed,
}

/// The DNS responder. Share it in an `Arc` between the UDP and TCP servers.
pub struct DnsResponder {
    records: HostAnswers,
    fallback: Fallback,
    upstream_timeout: Duration,
    forwards: Arc<Semaphore>,
    counters: Counters,
}

impl std::fmt::Debug for DnsResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsResponder")
            .field("hosts", &self.records.len())
            .field("fallback", &self.fallback)
            .field("upstream_timeout", &self.upstream_timeout)
            .finish_non_exhaustive()
    }
}

impl DnsResponder {
    /// A responder answering `records` and handling other names per `fallback`.
    pub fn new(records: HostAnswers, fallback: Fallback) -> Self {
        Self {
            records,
            fallback,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS_IN_FLIGHT)),
            counters: Counters::default(),
        }
    }

    /// Sets how long a forwarded query waits for the upstream resolver.
    #[must_use]
    pub fn with_upstream_timeout(mut self, timeout: Duration) -> Self {
        self.upstream_timeout = timeout;
        self
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DnsStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DnsStats {
            queries: get(&c.queries),
            answered: get(&c.answered),
            forwarded: get(&c.forwarded),
            nxdomain: get(&c.nxdomain),
            upstream_failures: get(&c.upstream_failures),
            malformed: get(&c.malformed),
        }
    }

    /// Serves DNS over UDP on `socket` until the socket fails. Forwarded queries run in
    /// their own tasks, so a slow upstream delays nobody else.
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket) -> Result<(), DnsError> {
        let socket = Arc::new(socket);
        let mut buf = vec![0u8; MAX_UDP];
        loop {
            let (n, peer) = match socket.recv_from(&mut buf).await {
                Ok(got) => got,
                Err(e) if is_transient(&e) => continue,
                Err(e) if is_resource_exhaustion(&e) => {
                    tracing::warn!(error = %e, "cannot receive a DNS query; backing off");
                    tokio::time::sleep(RESOURCE_BACK_OFF).await;
                    continue;
                }
                Err(source) => return Err(DnsError::Recv { source }),
            };
            let packet = &buf[..n];
            match self.handle(packet) {
                Outcome::Reply(bytes) => send_udp(&socket, &bytes, peer).await,
                Outcome::Forward(upstream, query) => {
                    let Ok(permit) = self.forwards.clone().try_acquire_owned() else {
                        bump(&self.counters.upstream_failures);
                        send_udp(&socket, &servfail(&query), peer).await;
                        continue;
                    };
                    let this = self.clone();
                    let socket = socket.clone();
                    let packet = packet.to_vec();
                    tokio::spawn(async move {
                        let bytes = this
                            .forward(upstream, Transport::Udp, &packet, &query)
                            .await;
                        send_udp(&socket, &bytes, peer).await;
                        drop(permit);
                    });
                }
                Outcome::Malformed => {
                    tracing::debug!(%peer, len = n, "dropping a malformed DNS packet");
                }
            }
        }
    }

    /// Serves DNS over TCP on `listener`, one task per connection, until the listener fails.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) -> Result<(), DnsError> {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(got) => got,
                Err(e) if is_transient(&e) => continue,
                Err(e) if is_resource_exhaustion(&e) => {
                    tracing::warn!(error = %e, "cannot accept a DNS connection; backing off");
                    tokio::time::sleep(RESOURCE_BACK_OFF).await;
                    continue;
                }
                Err(source) => return Err(DnsError::Accept { source }),
            };
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.serve_connection(stream).await {
                    tracing::debug!(%peer, error = %e, "DNS TCP connection ended with an error");
                }
            });
        }
    }

    /// Answers the length-prefixed queries of one TCP connection in order, until the
    /// client closes it, goes idle, or sends something that is not a DNS query.
    async fn serve_connection(&self, mut stream: TcpStream) -> io::Result<()> {
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(()),
            }
            let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
            match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut packet)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(()),
            }
            let reply = match self.handle(&packet) {
                Outcome::Reply(bytes) => bytes,
                Outcome::Forward(upstream, query) => {
                    self.forward(upstream, Transport::Tcp, &packet, &query)
                        .await
                }
                Outcome::Malformed => return Ok(()),
            };
            let Ok(reply_len) = u16::try_from(reply.len()) else {
                return Ok(());
            };
            let mut framed = Vec::with_capacity(reply.len() + 2);
            framed.extend_from_slice(&reply_len.to_be_bytes());
            framed.extend_from_slice(&reply);
            stream.write_all(&framed).await?;
        }
    }

    /// The reply to one packet that needs no upstream resolver: `None` for a packet that
    /// is dropped as malformed or would be forwarded. The fuzz targets' entry point.
    #[doc(hidden)]
    pub fn reply_without_upstream(&self, packet: &[u8]) -> Option<Vec<u8>> {
        match self.handle(packet) {
            Outcome::Reply(bytes) => Some(bytes),
            Outcome::Forward(..) | Outcome::Malformed => None,
        }
    }

    /// Decides what one packet gets.
    fn handle(&self, packet: &[u8]) -> Outcome {
        let Ok(query) = Message::from_vec(packet) else {
            bump(&self.counters.malformed);
            return Outcome::Malformed;
        };
        if query.metadata.message_type != MessageType::Query {
            bump(&self.counters.malformed);
            return Outcome::Malformed;
        }
        bump(&self.counters.queries);
        let recorded = match (query.metadata.op_code, query.queries.as_slice()) {
            (OpCode::Query, [q]) => self
                .records
                .get(&q.name().to_ascii())
                .map(|addr| (q.clone(), addr)),
            _ => None,
        };
        if let Some((question, addr)) = recorded {
            bump(&self.counters.answered);
            let mut response = response_to(&query, ResponseCode::NoError);
            response.metadata.authoritative = true;
            let name = question.name().clone();
            let rdata = match (question.query_class(), question.query_type()) {
                (DNSClass::IN, RecordType::A) => Some(RData::A(A(addr))),
                (DNSClass::IN, RecordType::AAAA) => Some(RData::AAAA(AAAA(addr.to_ipv6_mapped()))),
                _ => None,
            };
            if let Some(rdata) = rdata {
                response.add_answer(Record::from_rdata(name, ANSWER_TTL, rdata));
            }
            return self.encode(&response, &query);
        }
        match self.fallback {
            Fallback::Upstream(upstream) => Outcome::Forward(upstream, query),
            Fallback::NxDomain => {
                let code = if query.metadata.op_code == OpCode::Query && query.queries.len() == 1 {
                    bump(&self.counters.nxdomain);
                    ResponseCode::NXDomain
                } else if query.metadata.op_code == OpCode::Query {
                    ResponseCode::FormErr
                } else {
                    ResponseCode::NotImp
                };
                self.encode(&response_to(&query, code), &query)
            }
        }
    }

    fn encode(&self, response: &Message, query: &Message) -> Outcome {
        match response.to_vec() {
            Ok(bytes) => Outcome::Reply(bytes),
            Err(source) => {
                // Only a query with something odd in it (a name that does not fit again)
                // gets here; tell the client instead of leaving it to time out.
                let e = DnsError::Encode { source };
                tracing::warn!(error = %e, "answering SERVFAIL");
                bump(&self.counters.malformed);
                Outcome::Reply(servfail(query))
            }
        }
    }

    /// Forwards `packet` to `upstream` and returns the answer bytes unchanged, or SERVFAIL.
    async fn forward(
        &self,
        upstream: SocketAddr,
        transport: Transport,
        packet: &[u8],
        query: &Message,
    ) -> Vec<u8> {
        let result = match tokio::time::timeout(
            self.upstream_timeout,
            exchange(upstream, transport, packet, query.metadata.id),
        )
        .await
        {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(source)) => Err(DnsError::Upstream { upstream, source }),
            Err(_) => Err(DnsError::UpstreamTimeout {
                upstream,
                timeout: self.upstream_timeout,
            }),
        };
        match result {
            Ok(answer) => {
                bump(&self.counters.forwarded);
                answer
            }
            Err(e) => {
                bump(&self.counters.upstream_failures);
                tracing::warn!(error = %e, "forwarding a DNS query failed; answering SERVFAIL");
                servfail(query)
            }
        }
    }
}

/// One query-answer exchange with the upstream resolver.
async fn exchange(
    upstream: SocketAddr,
    transport: Transport,
    packet: &[u8],
    id: u16,
) -> io::Result<Vec<u8>> {
    match transport {
        Transport::Udp => {
            let bind: SocketAddr = match upstream {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let socket = UdpSocket::bind(bind).await?;
            socket.connect(upstream).await?;
            socket.send(packet).await?;
            let mut buf = vec![0u8; MAX_UDP];
            loop {
                let n = socket.recv(&mut buf).await?;
                // Ignore stray datagrams; the caller's timeout bounds the wait.
                if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                    buf.truncate(n);
                    return Ok(buf);
                }
            }
        }
        Transport::Tcp => {
            let len = u16::try_from(packet.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
            let mut stream = TcpStream::connect(upstream).await?;
            let mut framed = Vec::with_capacity(packet.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(packet);
            stream.write_all(&framed).await?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await?;
            let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut answer).await?;
            Ok(answer)
        }
    }
}

/// A response skeleton for `query`: same id, opcode, RD and CD, the question echoed, and
/// an OPT record when the query had one.
fn response_to(query: &Message, code: ResponseCode) -> Message {
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata = Metadata::response_from_request(&query.metadata);
    response.metadata.recursion_available = true;
    response.metadata.response_code = code;
    response.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        response.set_edns(edns);
    }
    response
}

/// SERVFAIL for `query`, with a minimal hand-off if even that cannot be encoded.
fn servfail(query: &Message) -> Vec<u8> {
    let mut response = response_to(query, ResponseCode::ServFail);
    if let Ok(bytes) = response.to_vec() {
        return bytes;
    }
    response.queries.clear();
    response.edns = None;
    response.to_vec().unwrap_or_default()
}

async fn send_udp(socket: &UdpSocket, bytes: &[u8], peer: SocketAddr) {
    if bytes.is_empty() {
        return;
    }
    if let Err(e) = socket.send_to(bytes, peer).await {
        tracing::debug!(%peer, error = %e, "cannot send a DNS answer");
    }
}

/// The first usable `nameserver` of a resolv.conf, on port 53. Link-local IPv6 entries
/// with a zone (`fe80::1%eth0`) are skipped.
pub fn upstream_from_resolv_conf(path: &Path) -> Result<SocketAddr, DnsError> {
    let text = std::fs::read_to_string(path).map_err(|source| DnsError::ReadResolvConf {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(addr)) => addr.parse::<IpAddr>().ok(),
                _ => None,
            }
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
        .ok_or_else(|| DnsError::NoNameserver {
            path: path.to_path_buf(),
        })
}

/// Builds a query for `name`, for callers that probe the responder (and the tests).
pub fn query_bytes(id: u16, name: &str, record_type: RecordType) -> Option<Vec<u8>> {
    let name = hickory_proto::rr::Name::from_ascii(name).ok()?;
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name, record_type));
    message.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> HostAnswers {
        let mut hosts = HostAnswers::new();
        hosts.insert("api.openai.com", Ipv4Addr::new(127, 0, 0, 2));
        hosts.insert("api.anthropic.com.", Ipv4Addr::new(127, 0, 0, 3));
        hosts
    }

    struct Running {
        responder: Arc<DnsResponder>,
        udp: SocketAddr,
        tcp: SocketAddr,
    }

    /// Starts a responder on UDP and TCP ports of 127.0.0.1, the same port number for both
    /// so that one `SocketAddr` names it as an upstream.
    async fn start(responder: DnsResponder) -> Running {
        let responder = Arc::new(responder);
        let (udp, tcp) = loop {
            let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = tcp.local_addr().unwrap();
            if let Ok(udp) = UdpSocket::bind(addr).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        tokio::spawn(responder.clone().serve_udp(udp));
        tokio::spawn(responder.clone().serve_tcp(tcp));
        Running {
            responder,
            udp: addr,
            tcp: addr,
        }
    }

    async fn ask_udp(server: SocketAddr, packet: &[u8]) -> Message {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(packet, server).await.unwrap();
        let mut buf = vec![0u8; MAX_UDP];
        let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
            .await
            .expect("no DNS answer within 10 s")
            .unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    }

    async fn query_udp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
        ask_udp(server, &query_bytes(0x1234, name, rtype).unwrap()).await
    }

    fn addresses(message: &Message) -> Vec<IpAddr> {
        message
            .answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    }

    async fn tcp_roundtrip(stream: &mut TcpStream, packet: &[u8]) -> Message {
        let len = u16::try_from(packet.len()).unwrap().to_be_bytes();
        stream.write_all(&len).await.unwrap();
        stream.write_all(packet).await.unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.unwrap();
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer).await.unwrap();
        Message::from_vec(&answer).unwrap()
    }

    #[tokio::test]
    async fn answers_a_and_aaaa_for_recorded_hosts() {
        let dns = start(DnsResponder::new(hosts(), Fallback::NxDomain)).await;
        let a = query_udp(dns.udp, "api.openai.com.", RecordType::A).await;
        assert_eq!(a.metadata.id, 0x1234);
        assert_eq!(a.metadata.message_type, MessageType::Response);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&a), vec![IpAddr::from([127, 0, 0, 2])]);
        assert_eq!(a.answers[0].ttl, ANSWER_TTL);
        assert_eq!(a.queries.len(), 1);

        // AAAA: the same loopback address, IPv4-mapped.
        let aaaa = query_udp(dns.udp, "api.openai.com.", RecordType::AAAA).await;
        assert_eq!(
            addresses(&aaaa),
            vec!["::ffff:127.0.0.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(aaaa.answers[0].ttl, ANSWER_TTL);

        // Other types for recorded names: empty NOERROR.
        let mx = query_udp(dns.udp, "api.openai.com.", RecordType::MX).await;
        assert_eq!(mx.metadata.response_code, ResponseCode::NoError);
        assert_eq!(mx.answers.len(), 0);
        assert_eq!(dns.responder.stats().answered, 3);
    }

    #[tokio::test]
    async fn names_are_case_insensitive() {
        let dns = start(DnsResponder::new(hosts(), Fallback::NxDomain)).await;
        let a = query_udp(dns.udp, "API.OpenAI.Com.", RecordType::A).await;
        assert_eq!(addresses(&a), vec![IpAddr::from([127, 0, 0, 2])]);
        // The question is echoed as asked.
        assert_eq!(a.queries[0].name().to_ascii(), "API.OpenAI.Com.");
    }

    #[tokio::test]
    async fn tcp_connection_carries_several_queries() {
        let dns = start(DnsResponder::new(hosts(), Fallback::NxDomain)).await;
        let mut stream = TcpStream::connect(dns.tcp).await.unwrap();
        let a = tcp_roundtrip(
            &mut stream,
            &query_bytes(1, "api.openai.com.", RecordType::A).unwrap(),
        )
        .await;
        let aaaa = tcp_roundtrip(
            &mut stream,
            &query_bytes(2, "api.openai.com.", RecordType::AAAA).unwrap(),
        )
        .await;
        assert_eq!(a.metadata.id, 1);
        assert_eq!(addresses(&a), vec![IpAddr::from([127, 0, 0, 2])]);
        assert_eq!(aaaa.metadata.id, 2);
        assert_eq!(
            addresses(&aaaa),
            vec!["::ffff:127.0.0.2".parse::<IpAddr>().unwrap()]
        );

        // Both queries written before either answer is read: answered in order.
        let mut both = Vec::new();
        for (id, rtype) in [(3, RecordType::A), (4, RecordType::AAAA)] {
            let q = query_bytes(id, "api.openai.com.", rtype).unwrap();
            both.extend_from_slice(&u16::try_from(q.len()).unwrap().to_be_bytes());
            both.extend_from_slice(&q);
        }
        stream.write_all(&both).await.unwrap();
        for id in [3, 4] {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await.unwrap();
            let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut answer).await.unwrap();
            assert_eq!(Message::from_vec(&answer).unwrap().metadata.id, id);
        }
    }

    #[tokio::test]
    async fn unrecorded_names_get_nxdomain_without_network() {
        let dns = start(DnsResponder::new(hosts(), Fallback::NxDomain)).await;
        let answer = query_udp(dns.udp, "example.com.", RecordType::A).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(answer.answers.len(), 0);
        assert_eq!(dns.responder.stats().nxdomain, 1);
    }

    #[tokio::test]
    async fn unrecorded_names_are_forwarded_upstream() {
        let mut upstream_hosts = HostAnswers::new();
        upstream_hosts.insert("other.example", Ipv4Addr::new(192, 0, 2, 9));
        let upstream = start(DnsResponder::new(upstream_hosts, Fallback::NxDomain)).await;
        let dns = start(DnsResponder::new(hosts(), Fallback::Upstream(upstream.udp))).await;

        let relayed = query_udp(dns.udp, "other.example.", RecordType::A).await;
        assert_eq!(addresses(&relayed), vec![IpAddr::from([192, 0, 2, 9])]);
        let missing = query_udp(dns.udp, "nowhere.example.", RecordType::A).await;
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        // Recorded hosts are still answered locally.
        let local = query_udp(dns.udp, "api.openai.com.", RecordType::A).await;
        assert_eq!(addresses(&local), vec![IpAddr::from([127, 0, 0, 2])]);

        // Over TCP too.
        let mut stream = TcpStream::connect(dns.tcp).await.unwrap();
        let relayed = tcp_roundtrip(
            &mut stream,
            &query_bytes(7, "other.example.", RecordType::A).unwrap(),
        )
        .await;
        assert_eq!(relayed.metadata.id, 7);
        assert_eq!(addresses(&relayed), vec![IpAddr::from([192, 0, 2, 9])]);

        assert_eq!(dns.responder.stats().forwarded, 3);
        assert_eq!(upstream.responder.stats().queries, 3);
    }

    #[tokio::test]
    async fn silent_upstream_gives_servfail() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dns = start(
            DnsResponder::new(hosts(), Fallback::Upstream(silent.local_addr().unwrap()))
                .with_upstream_timeout(Duration::from_millis(200)),
        )
        .await;
        let answer = query_udp(dns.udp, "example.com.", RecordType::A).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(dns.responder.stats().upstream_failures, 1);
    }

    #[tokio::test]
    async fn malformed_packets_are_dropped_and_serving_goes_on() {
        let dns = start(DnsResponder::new(hosts(), Fallback::NxDomain)).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for junk in [&b""[..], b"\x01", b"garbage that is not dns", &[0xff; 40]] {
            client.send_to(junk, dns.udp).await.unwrap();
        }
        // A response sent to the server is not a query either.
        let mut response = Message::response(9, OpCode::Query);
        response.add_query(Query::query(
            hickory_proto::rr::Name::from_ascii("api.openai.com.").unwrap(),
            RecordType::A,
        ));
        client
            .send_to(&response.to_vec().unwrap(), dns.udp)
            .await
            .unwrap();
        let a = query_udp(dns.udp, "api.openai.com.", RecordType::A).await;
        assert_eq!(addresses(&a), vec![IpAddr::from([127, 0, 0, 2])]);
        // The UDP server handles datagrams in order, so all junk was seen by now (the
        // empty datagram may or may not be delivered as a zero-length read).
        assert!(dns.responder.stats().malformed >= 4);

        // TCP: junk closes the connection; new connections are still served.
        let mut stream = TcpStream::connect(dns.tcp).await.unwrap();
        stream.write_all(b"\x00\x05hello").await.unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
            .await
            .expect("connection not closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        let mut stream = TcpStream::connect(dns.tcp).await.unwrap();
        let a = tcp_roundtrip(
            &mut stream,
            &query_bytes(5, "api.openai.com.", RecordType::A).unwrap(),
        )
        .await;
        assert_eq!(addresses(&a), vec![IpAddr::from([127, 0, 0, 2])]);
    }

    #[test]
    fn resolv_conf_first_nameserver() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(
            &path,
            "# comment\nsearch example.com\nnameserver fe80::1%eth0\nnameserver 10.0.0.53\nnameserver 10.0.0.54\n",
        )
        .unwrap();
        assert_eq!(
            upstream_from_resolv_conf(&path).unwrap(),
            "10.0.0.53:53".parse().unwrap()
        );
        std::fs::write(&path, "search example.com\n").unwrap();
        assert!(matches!(
            upstream_from_resolv_conf(&path),
            Err(DnsError::NoNameserver { .. })
        ));
        assert!(matches!(
            upstream_from_resolv_conf(&dir.path().join("missing")),
            Err(DnsError::ReadResolvConf { .. })
        ));
    }
}
