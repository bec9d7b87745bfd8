//! The response body replay sends: either all bytes at once (with a `Content-Length`), or
//! recorded chunks (one per server-sent event) released at their recorded offsets from the
//! request's arrival under the run's [`Pace`], each as its own body frame so the server
//! flushes it on its own. Each wait is for a fixed base instant plus the chunk's offset, so
//! delays do not add up, on a precise timer ([`Deadline`]). When the body is dropped
//! (sent, or the client went away) the time it took is added to the run's statistics. A
//! forwarded answer (`--on-miss passthrough|record`) is a third kind: frames handed over by
//! the forwarding task as they arrive from the real host, ending in an error (so the
//! connection is cut rather than the body looking whole) when the real host broke off, and
//! then the real host's trailers, if it sent some. A recorded answer with trailers sends them
//! as a last frame, after the body; its length is then left open, so HTTP/1.1 sends it
//! chunked, the only way trailers go there. An injected fault can end a paced body early
//! ([`Ending`]): cut (an error, so the connection is cut) or stalled (nothing more, ever).
//! With `--metrics` the body carries the answer's [`Observation`]. Over HTTP/2 a body sent
//! at once is handed over in data frames of a bounded size
//! ([`ReplayBody::in_frames_of_at_most`]), so that the answers ready on a connection go out
//! in one write ([`crate::h2_writes`]); an event stays one frame.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use tokio::sync::{mpsc, oneshot};

use crate::deadline::Deadline;
use crate::metrics::Observation;
use crate::options::Pace;
use crate::report::ServeClock;
use crate::response::TimedChunk;

/// A replayed response body.
#[derive(Debug)]
pub struct ReplayBody {
    kind: Kind,
    trailers: Option<HeaderMap>,
    timer: Option<ServeClock>,
    observation: Option<Observation>,
    /// The largest data frame a body sent at once is handed over in.
    max_frame: usize,
}

/// How a paced body ends once its chunks are sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ending {
    /// Normally, trailers and all.
    #[default]
    Whole,
    /// With an error: the server cuts the connection mid-body.
    Cut,
    /// Never: the body waits until the app goes away.
    Stall,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Paced(Paced),
    Stream {
        frames: mpsc::Receiver<io::Result<Bytes>>,
        /// The trailers, handed over before `frames` closes, if any come.
        trailers: Option<oneshot::Receiver<HeaderMap>>,
    },
}

#[derive(Debug)]
struct Paced {
    chunks: Arc<[TimedChunk]>,
    next: usize,
    base: Instant,
    pace: Pace,
    deadline: Deadline,
    ending: Ending,
    /// Whether a cut body has let the server flush its last chunk (by returning
    /// `Pending` once) before the error that cuts the connection.
    flushed: bool,
}

impl ReplayBody {
    fn of(kind: Kind) -> Self {
        Self {
            kind,
            trailers: None,
            timer: None,
            observation: None,
            max_frame: usize::MAX,
        }
    }

    /// A body sent at once.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::of(Kind::Full(Some(bytes.into())).normalise())
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// Chunks released at `base` plus their offset under `pace`, timed by `deadline`.
    pub fn paced(chunks: Arc<[TimedChunk]>, base: Instant, pace: Pace, deadline: Deadline) -> Self {
        Self::of(Kind::Paced(Paced {
            chunks,
            next: 0,
            base,
            pace,
            deadline,
            ending: Ending::Whole,
            flushed: false,
        }))
    }

    /// Frames sent on the other end of `frames` as they come; an `Err` ends the body
    /// with that error, which makes the server cut the connection.
    pub fn stream(frames: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        Self::stream_with_trailers(frames, None)
    }

    /// [`Self::stream`], then the trailers sent on `trailers` (before `frames` closes), if
    /// any.
    pub fn stream_with_trailers(
        frames: mpsc::Receiver<io::Result<Bytes>>,
        trailers: Option<oneshot::Receiver<HeaderMap>>,
    ) -> Self {
        Self::of(Kind::Stream { frames, trailers })
    }

    /// Sends `trailers` after the body, when there are some.
    #[must_use]
    pub fn with_trailers(mut self, trailers: Option<HeaderMap>) -> Self {
        self.trailers = trailers;
        self
    }

    /// Ends a paced body as `ending` says once its chunks are sent.
    #[must_use]
    pub fn ending(mut self, ending: Ending) -> Self {
        if let Kind::Paced(paced) = &mut self.kind {
            paced.ending = ending;
        }
        self
    }

    /// Keeps `observation` for the metrics: told of the first frame, dropped at the end.
    #[must_use]
    pub fn observed(mut self, observation: Option<Observation>) -> Self {
        self.observation = observation;
        self
    }

    /// Hands a body sent at once over in data frames of at most `max_frame` bytes. Paced
    /// chunks and forwarded frames go as they are: an event is one frame.
    #[must_use]
    pub fn in_frames_of_at_most(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame.max(1);
        self
    }

    /// Counts the time until this body is done as serve time, on `clock`.
    #[must_use]
    pub fn timed(mut self, clock: ServeClock) -> Self {
        self.timer = Some(clock);
        self
    }
}

impl Kind {
    fn normalise(self) -> Self {
        match self {
            Self::Full(Some(b)) if b.is_empty() => Self::Full(None),
            other => other,
        }
    }
}

impl http_body::Body for ReplayBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let frame = match &mut this.kind {
            Kind::Stream { frames, trailers } => match ready!(frames.poll_recv(cx)) {
                Some(Ok(bytes)) => Some(bytes),
                Some(Err(e)) => {
                    this.timer = None;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    if let Some(mut receiver) = trailers.take()
                        && let Ok(late) = receiver.try_recv()
                    {
                        this.trailers = Some(late);
                    }
                    None
                }
            },
            Kind::Full(bytes) => match bytes {
                Some(whole) if whole.len() > this.max_frame => Some(whole.split_to(this.max_frame)),
                _ => bytes.take(),
            },
            Kind::Paced(paced) => match paced.chunks.get(paced.next) {
                None if paced.ending == Ending::Stall => return Poll::Pending,
                None if paced.ending == Ending::Cut && !paced.flushed => {
                    paced.flushed = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                None if paced.ending == Ending::Cut => {
                    this.timer = None;
                    this.observation = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "stream cut by an injected fault",
                    ))));
                }
                None => None,
                Some(chunk) => {
                    if let Some(delay) = paced.pace.delay(chunk.offset_ms)
                        && let Err(e) = ready!(paced.deadline.poll_until(cx, paced.base + delay))
                    {
                        this.timer = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                    paced.next += 1;
                    Some(chunk.bytes.clone())
                }
            },
        };
        if let Some(bytes) = frame {
            if let Some(observation) = &mut this.observation {
                observation.frame_sent();
            }
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        this.timer = None;
        this.observation = None;
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.trailers.is_none()
            && match &self.kind {
                Kind::Full(bytes) => bytes.is_none(),
                Kind::Paced(paced) => {
                    paced.next >= paced.chunks.len() && paced.ending == Ending::Whole
                }
                Kind::Stream { .. } => false,
            }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) if self.trailers.is_none() => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Full(_) | Kind::Paced(_) | Kind::Stream { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Stats;
    use http_body_util::BodyExt;
    use std::time::Duration;

    fn chunks(offsets: &[f64]) -> Arc<[TimedChunk]> {
        offsets
            .iter()
            .enumerate()
            .map(|(i, &offset_ms)| TimedChunk {
                offset_ms,
                bytes: Bytes::from(format!("data: {i}\n\n")),
            })
            .collect()
    }

    async fn all_frames(mut body: ReplayBody) -> Vec<Frame<Bytes>> {
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.unwrap());
        }
        frames
    }

    async fn arrivals(body: ReplayBody, base: Instant) -> Vec<(Duration, Bytes)> {
        let mut body = body;
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            out.push((base.elapsed(), data));
        }
        out
    }

    fn ms(at: Duration) -> f64 {
        at.as_secs_f64() * 1e3
    }

    /// Real time: a chunk may not go out before its offset. How late it goes out on a busy
    /// machine is the service test's to check; the bound here is loose, only for a pace
    /// that ignored the offsets' scale.
    #[tokio::test]
    async fn recorded_pace_releases_each_chunk_at_its_offset() {
        let base = Instant::now();
        let offsets = [0.0, 30.0, 30.0, 75.5];
        let body = ReplayBody::paced(chunks(&offsets), base, Pace::Recorded, Deadline::default());
        let got = arrivals(body, base).await;
        assert_eq!(got.len(), offsets.len());
        for ((at, _), offset) in got.iter().zip(offsets) {
            assert!(ms(*at) >= offset, "{at:?} is before {offset} ms");
            assert!(ms(*at) < offset + 50.0, "{at:?} is long after {offset} ms");
        }
        assert_eq!(got[3].1, "data: 3\n\n");
    }

    #[tokio::test]
    async fn factor_and_instant_pace() {
        let base = Instant::now();
        let fast = ReplayBody::paced(
            chunks(&[0.0, 100.0]),
            base,
            Pace::Factor(4.0),
            Deadline::default(),
        );
        let got = arrivals(fast, base).await;
        assert!(ms(got[1].0) >= 25.0 && ms(got[1].0) < 100.0, "{got:?}");

        let base = Instant::now();
        let instant = ReplayBody::paced(
            chunks(&[0.0, 100.0, 5000.0]),
            base,
            Pace::Instant,
            Deadline::default(),
        );
        let got = arrivals(instant, base).await;
        assert_eq!(got.len(), 3);
        assert!(ms(got[2].0) < 100.0, "{got:?}");
    }

    #[tokio::test]
    async fn trailers_follow_the_body_and_leave_its_length_open() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let mut body = ReplayBody::full("abc").with_trailers(Some(trailers.clone()));
        assert_eq!(http_body::Body::size_hint(&body).exact(), None);
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(data, "abc");
        assert!(!http_body::Body::is_end_stream(&body));
        let last = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(last, trailers);
        assert!(http_body::Body::is_end_stream(&body));
        assert!(body.frame().await.is_none());

        let base = Instant::now();
        let paced = ReplayBody::paced(
            chunks(&[0.0, 5.0]),
            base,
            Pace::Recorded,
            Deadline::default(),
        )
        .with_trailers(Some(trailers.clone()));
        let frames = all_frames(paced).await;
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2].trailers_ref(), Some(&trailers));
    }

    #[tokio::test]
    async fn a_whole_body_in_bounded_frames_is_the_same_bytes_in_order() {
        let bytes: Bytes = (0..2500u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let mut body = ReplayBody::full(bytes.clone()).in_frames_of_at_most(1023);
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(2500));
        let mut sizes = Vec::new();
        let mut joined = Vec::new();
        while !http_body::Body::is_end_stream(&body) {
            let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
            sizes.push(data.len());
            joined.extend_from_slice(&data);
            let left = (bytes.len() - joined.len()) as u64;
            assert_eq!(http_body::Body::size_hint(&body).exact(), Some(left));
        }
        assert_eq!(sizes, [1023, 1023, 454]);
        assert_eq!(joined, bytes);
        assert!(body.frame().await.is_none());

        // A paced chunk is an event, and stays one frame.
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let paced = ReplayBody::paced(
            chunks(&[0.0, 1.0]),
            Instant::now(),
            Pace::Recorded,
            Deadline::default(),
        )
        .with_trailers(Some(trailers.clone()))
        .in_frames_of_at_most(4);
        let frames = all_frames(paced).await;
        let data: Vec<&[u8]> = frames
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| &d[..])
            .collect();
        assert_eq!(data, [&b"data: 0\n\n"[..], b"data: 1\n\n"]);
        assert_eq!(frames.last().unwrap().trailers_ref(), Some(&trailers));
    }

    #[tokio::test]
    async fn a_cut_body_errs_after_its_chunks_and_a_stalled_one_never_ends() {
        let base = Instant::now();
        let mut cut = ReplayBody::paced(
            chunks(&[0.0, 0.0]),
            base,
            Pace::Instant,
            Deadline::default(),
        )
        .ending(Ending::Cut);
        for i in 0..2 {
            let data = cut.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(data, format!("data: {i}\n\n"));
        }
        assert!(!http_body::Body::is_end_stream(&cut));
        assert!(cut.frame().await.unwrap().is_err(), "the cut is an error");
        let none: [f64; 0] = [];
        let mut stall = ReplayBody::paced(chunks(&none), base, Pace::Instant, Deadline::default())
            .ending(Ending::Stall);
        assert!(!http_body::Body::is_end_stream(&stall));
        let waited = tokio::time::timeout(Duration::from_millis(50), stall.frame()).await;
        assert!(
            waited.is_err(),
            "a stalled body sends nothing and does not end"
        );
    }

    #[tokio::test]
    async fn serve_time_is_counted_when_the_body_ends() {
        let stats = Arc::new(Stats::new());
        let base = Instant::now();
        let body = ReplayBody::paced(
            chunks(&[10.0, 40.0]),
            base,
            Pace::Recorded,
            Deadline::default(),
        )
        .timed(stats.serve_clock(base));
        let got = arrivals(body, base).await;
        let serve_time = stats.report().serve_time;
        assert!(serve_time >= got[1].0 && serve_time < got[1].0 + Duration::from_millis(50));
        let full = ReplayBody::full("abc");
        assert_eq!(http_body::Body::size_hint(&full).exact(), Some(3));
        assert!(http_body::Body::is_end_stream(&ReplayBody::empty()));
    }
}
