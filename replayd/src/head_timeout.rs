//! The HTTP/1.1 header read timeout: a connection whose next request head has not come in
//! whole within the timeout of its previous answer's end (or of its start) is closed, so a
//! client that stalls (or trickles a head byte by byte) cannot hold a connection for ever.
//!
//! hyper's own (`header_read_timeout`) arms a new timer for every request head and drops it
//! when the head is in: an allocation, a clock read, two updates of the runtime's timer
//! wheel and one more pass of its dispatcher per request. On `bench replay --only sdk-post`'s
//! load that cost 3-5% of replayd's requests a second (by hand, alternating, 8 pairs); a
//! build with no header timeout at all serves within 1% of this one. Here each connection
//! keeps one timer, moved only when it fires: the service marks each head's arrival
//! ([`HeadWatched`]) and the answer's body its end ([`EndMarked`]), and when the timer
//! fires it either closes the connection or is set again for the head the connection is now
//! waiting for ([`HeadDeadline`]). A head is never cut off early, and an answer served for
//! longer than the timeout (a slow stream) is never cut.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Response;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// [`HeadClock::waiting_since`] while a request is being served: no head is awaited.
const SERVING: u64 = u64::MAX;

/// One connection's record of when it began waiting for its next request head.
#[derive(Debug)]
struct HeadClock {
    /// The instant `waiting_since` counts from: the connection's start.
    base: Instant,
    /// Nanoseconds from `base` to the end of the last answer (0: the connection's start), or
    /// [`SERVING`].
    waiting_since: AtomicU64,
}

impl HeadClock {
    fn serving(&self) {
        self.waiting_since.store(SERVING, Ordering::Relaxed);
    }

    fn waiting_from_now(&self) {
        let since = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(SERVING - 1);
        self.waiting_since.store(since, Ordering::Relaxed);
    }

    /// When the awaited head is due, or `None` while a request is being served.
    fn due(&self, timeout: Duration) -> Option<Instant> {
        match self.waiting_since.load(Ordering::Relaxed) {
            SERVING => None,
            since => Some(self.base + Duration::from_nanos(since) + timeout),
        }
    }
}

/// Starts watching a new connection's request heads: the service wrapper that marks them and
/// the deadline the connection's task polls.
pub fn watch<S>(service: S, timeout: Duration) -> (HeadWatched<S>, HeadDeadline) {
    let base = Instant::now();
    let clock = Arc::new(HeadClock {
        base,
        waiting_since: AtomicU64::new(0),
    });
    let deadline = HeadDeadline {
        clock: clock.clone(),
        timeout,
        timer: Box::pin(tokio::time::sleep_until(base + timeout)),
    };
    (HeadWatched { service, clock }, deadline)
}

/// A connection's service, marking each request's head as arrived and its answer's end.
#[derive(Clone, Debug)]
pub struct HeadWatched<S> {
    service: S,
    clock: Arc<HeadClock>,
}

impl<S, R, B> hyper::service::Service<R> for HeadWatched<S>
where
    S: hyper::service::Service<R, Response = Response<B>>,
    S::Future: Unpin,
{
    type Response = Response<EndMarked<B>>;
    type Error = S::Error;
    type Future = Answering<S::Future>;

    fn call(&self, request: R) -> Self::Future {
        self.clock.serving();
        Answering {
            answer: self.service.call(request),
            clock: Some(self.clock.clone()),
        }
    }
}

/// The answer to one request, its body marked to tell the clock its end.
#[derive(Debug)]
pub struct Answering<F> {
    answer: F,
    clock: Option<Arc<HeadClock>>,
}

impl<F, B, E> Future for Answering<F>
where
    F: Future<Output = Result<Response<B>, E>> + Unpin,
{
    type Output = Result<Response<EndMarked<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let response = ready!(Pin::new(&mut this.answer).poll(cx))?;
        let clock = this.clock.take();
        Poll::Ready(Ok(response.map(|body| EndMarked { body, clock })))
    }
}

/// An answer's body that tells its connection's clock when it has ended: the next head is
/// awaited from then.
#[derive(Debug)]
pub struct EndMarked<B> {
    body: B,
    /// Taken when the end is told, so it is told once.
    clock: Option<Arc<HeadClock>>,
}

impl<B> EndMarked<B> {
    fn tell_end(clock: &mut Option<Arc<HeadClock>>) {
        if let Some(clock) = clock.take() {
            clock.waiting_from_now();
        }
    }
}

impl<B: Body + Unpin> Body for EndMarked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        if frame.is_none() {
            Self::tell_end(&mut this.clock);
        }
        Poll::Ready(frame)
    }

    /// hyper asks this after each frame and, once it is true, polls no more frames.
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for EndMarked<B> {
    /// hyper drops a body it has seen the end of (by [`Body::is_end_stream`]) without
    /// polling it to `None`; its end is told here then.
    fn drop(&mut self) {
        Self::tell_end(&mut self.clock);
    }
}

/// The timer a connection's task polls to learn that its awaited head is overdue.
#[derive(Debug)]
pub struct HeadDeadline {
    clock: Arc<HeadClock>,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
}

impl HeadDeadline {
    /// Whether the head the connection waits for is overdue; registers the task to be woken
    /// when the timer next fires otherwise.
    pub fn poll_overdue(&mut self, cx: &mut Context<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.clock.due(self.timeout) {
                Some(due) if due <= now => return true,
                Some(due) => self.timer.as_mut().reset(due),
                None => self.timer.as_mut().reset(now + self.timeout),
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http::Request;
    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);
    const REQUEST: &[u8] = b"GET /answer HTTP/1.1\r\nhost: api.openai.com\r\n\r\n";

    /// A body of `frames` one-byte frames, each sent `spacing` after the one before (or the
    /// request).
    struct Slow {
        frames: usize,
        spacing: Duration,
        wait: Pin<Box<Sleep>>,
    }

    impl Body for Slow {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if self.frames == 0 {
                return Poll::Ready(None);
            }
            ready!(self.wait.as_mut().poll(cx));
            self.frames -= 1;
            let next = Instant::now() + self.spacing;
            self.wait.as_mut().reset(next);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }

        /// Exact, so the answer goes out with a `Content-Length` and its bytes as they are.
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.frames as u64)
        }
    }

    /// Serves HTTP/1.1 on `io` as the acceptor does, every answer a [`Slow`] body of
    /// `frames` frames `spacing` apart; how the connection ended (`Err("overdue")` when its
    /// head deadline closed it).
    async fn serve(io: DuplexStream, frames: usize, spacing: Duration) -> Result<(), &'static str> {
        let service = hyper::service::service_fn(move |_: Request<Incoming>| {
            std::future::ready(Ok::<_, Infallible>(Response::new(Slow {
                frames,
                spacing,
                wait: Box::pin(tokio::time::sleep(spacing)),
            })))
        });
        let service = BoxedService(service);
        let (service, mut head) = watch(service, TIMEOUT);
        let connection = http1::Builder::new().serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        std::future::poll_fn(|cx| match connection.as_mut().poll(cx) {
            Poll::Ready(result) => Poll::Ready(result.map_err(|_| "http error")),
            Poll::Pending if head.poll_overdue(cx) => Poll::Ready(Err("overdue")),
            Poll::Pending => Poll::Pending,
        })
        .await
    }

    /// A service whose futures are boxed, as replayd's are (and [`HeadWatched`] needs).
    struct BoxedService<S>(S);

    impl<S, R> hyper::service::Service<R> for BoxedService<S>
    where
        S: hyper::service::Service<R>,
        S::Future: Send + 'static,
    {
        type Response = S::Response;
        type Error = S::Error;
        type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

        fn call(&self, request: R) -> Self::Future {
            Box::pin(self.0.call(request))
        }
    }

    /// Sends one request on `client` and reads its answer of `length` body bytes whole.
    async fn ask(client: &mut DuplexStream, length: usize) {
        client.write_all(REQUEST).await.unwrap();
        let mut received = Vec::new();
        while !(received.ends_with(&b"x".repeat(length))
            && received.windows(4).any(|w| w == b"\r\n\r\n"))
        {
            let mut chunk = [0u8; 4096];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the connection closed before the answer");
            received.extend_from_slice(&chunk[..n]);
        }
        assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_served_for_longer_than_the_timeout_is_not_cut_off() {
        let (mut client, server_end) = tokio::io::duplex(1 << 16);
        // Four frames 20 s apart: each answer takes 80 s, over twice the timeout.
        let served = tokio::spawn(serve(server_end, 4, Duration::from_secs(20)));
        let started = Instant::now();
        for _ in 0..2 {
            ask(&mut client, 4).await;
        }
        assert_eq!(started.elapsed(), Duration::from_secs(160));
        drop(client);
        assert_eq!(served.await.unwrap(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_trickled_byte_by_byte_is_cut_off_when_the_timeout_runs_out() {
        let (mut client, server_end) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(serve(server_end, 1, Duration::from_secs(10)));
        ask(&mut client, 1).await;
        let answered = Instant::now();
        // One byte every 5 s: the head grows all along, and is never whole in time.
        let mut trickled = REQUEST.iter();
        while !served.is_finished() {
            let Some(byte) = trickled.next() else {
                panic!("the whole head went out and the connection was not cut off");
            };
            client.write_all(&[*byte]).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        assert_eq!(served.await.unwrap(), Err("overdue"));
        // The sleep that saw the end began at 30 s, so the cut-off came at 30 s, never before.
        assert_eq!(answered.elapsed(), TIMEOUT + Duration::from_secs(5));
    }
}
