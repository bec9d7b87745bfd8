//! What replayd's server loops do when their socket reports an error: the TCP accept
//! loops (HTTP in `accept`, DNS over TCP in `dns`) and the DNS UDP receive loop. An error
//! about one peer leaves the socket usable and is skipped ([`is_transient`]); running out
//! of descriptors, buffers or memory is waited out ([`is_resource_exhaustion`], then
//! [`RESOURCE_BACK_OFF`]) rather than spun on; anything else means the socket itself is
//! broken and stops the loop.
//!
//! One classification serves both calls. `accept(2)` reports a connection aborted before
//! it was accepted, and (on Linux) network errors already pending on the new connection,
//! which its manual says to treat like `EAGAIN`: `ENETDOWN`, `EPROTO`, `ENOPROTOOPT`,
//! `EHOSTDOWN`, `ENONET`, `EHOSTUNREACH`, `EOPNOTSUPP`, `ENETUNREACH`. `recvfrom(2)` on a UDP socket reports ICMP
//! errors caused by an earlier answer to some client (`ECONNREFUSED`, unreachable hosts
//! and networks, timeouts). Both are interrupted (`EINTR`) or find nothing yet (`EAGAIN`);
//! both can run out of memory (`ENOMEM`, `ENOBUFS`); `accept(2)` can also run out of
//! descriptors (`EMFILE`, `ENFILE`).

use std::io;
use std::time::Duration;

/// How long a loop waits after [`is_resource_exhaustion`] before it tries again.
pub const RESOURCE_BACK_OFF: Duration = Duration::from_millis(50);

/// An error about one peer that leaves the socket usable: try again at once.
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EPROTO | libc::ENOPROTOOPT | libc::EHOSTDOWN | libc::ENONET | libc::EOPNOTSUPP)
    )
}

/// Out of file descriptors (`EMFILE`, `ENFILE`), buffers (`ENOBUFS`) or memory (`ENOMEM`):
/// worth trying again after [`RESOURCE_BACK_OFF`].
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    ) || e.kind() == io::ErrorKind::OutOfMemory
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    fn assert_transient(code: i32) {
        let e = errno(code);
        assert!(is_transient(&e), "{e} should be transient");
        assert!(!is_resource_exhaustion(&e), "{e} is not about resources");
    }

    fn assert_exhaustion(code: i32) {
        let e = errno(code);
        assert!(
            is_resource_exhaustion(&e),
            "{e} should be resource exhaustion"
        );
        assert!(!is_transient(&e), "{e} is not about one peer");
    }

    fn assert_fatal(code: i32) {
        let e = errno(code);
        assert!(!is_transient(&e), "{e} should stop the loop");
        assert!(!is_resource_exhaustion(&e), "{e} should stop the loop");
    }

    #[test]
    fn a_connection_gone_before_accept_is_skipped() {
        assert_transient(libc::ECONNABORTED);
        assert_transient(libc::ECONNRESET);
    }

    #[test]
    fn an_icmp_error_for_an_earlier_answer_is_skipped() {
        assert_transient(libc::ECONNREFUSED);
        assert_transient(libc::ETIMEDOUT);
    }

    #[test]
    fn network_errors_pending_on_a_new_connection_are_skipped() {
        assert_transient(libc::ENETDOWN);
        assert_transient(libc::EPROTO);
        assert_transient(libc::ENOPROTOOPT);
        assert_transient(libc::EHOSTDOWN);
        assert_transient(libc::ENONET);
        assert_transient(libc::EHOSTUNREACH);
        assert_transient(libc::EOPNOTSUPP);
        assert_transient(libc::ENETUNREACH);
    }

    #[test]
    fn interruptions_and_empty_queues_are_skipped() {
        assert_transient(libc::EINTR);
        assert_transient(libc::EAGAIN);
    }

    #[test]
    fn running_out_of_descriptors_is_waited_out() {
        assert_exhaustion(libc::EMFILE);
        assert_exhaustion(libc::ENFILE);
    }

    #[test]
    fn running_out_of_memory_is_waited_out() {
        assert_exhaustion(libc::ENOBUFS);
        assert_exhaustion(libc::ENOMEM);
        assert!(is_resource_exhaustion(&io::Error::from(
            io::ErrorKind::OutOfMemory
        )));
    }

    #[test]
    fn a_broken_socket_stops_the_loop() {
        assert_fatal(libc::EBADF);
        assert_fatal(libc::EINVAL);
        assert_fatal(libc::ENOTSOCK);
        assert_fatal(libc::EFAULT);
        // A security module refusing every accept would otherwise be retried forever.
        assert_fatal(libc::EPERM);
    }
}
