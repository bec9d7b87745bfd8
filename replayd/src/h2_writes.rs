//! HTTP/2 answers written together. The `h2` crate writes a DATA frame at or above its
//! chaining threshold from the body's own buffer, beside its frame buffer, and must flush
//! before it can encode another frame: every answer on a connection then costs its own TLS
//! record and `writev`, however many streams are ready at once (one `writev` per request
//! under h2load's 8 streams a connection). The threshold is 256 bytes on a transport with
//! vectored writes and 1 KiB without, so an h2 connection's transport is wrapped in
//! [`Unvectored`], which says it has none, and an h2 answer's body sent at once is handed
//! over in data frames of at most [`H2_FRAME`] bytes
//! ([`crate::body::ReplayBody::in_frames_of_at_most`]): each frame is then copied into the
//! frame buffer, and what is ready goes out in one write when the connection flushes. A
//! paced event stays one DATA frame, whatever its size: it goes out at its own instant.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The largest data frame of an h2 answer's body: the `h2` crate copies a DATA frame of
/// fewer than 1,024 bytes into its frame buffer on a transport without vectored writes.
pub const H2_FRAME: usize = 1023;

/// A transport that reports no vectored writes (see the module's comment).
pub struct Unvectored<T>(pub T);

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Unvectored<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Unvectored<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
