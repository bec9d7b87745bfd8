//! A request as replayd received it from the app: what the engine signs and matches, what
//! `explain` describes, and what the upstream forwards on a miss.

use bytes::Bytes;
use http::HeaderMap;
use llmsim_snapshot::authority::Authority;

/// A request as the engine sees it.
#[derive(Clone, Debug, Default)]
pub struct ReplayRequest {
    /// The method, e.g. `POST`.
    pub method: String,
    /// The host the app asked for (SNI or `Host`); a port is ignored.
    pub host: String,
    /// The request target: path and query string.
    pub path: String,
    /// The request headers.
    pub headers: HeaderMap,
    /// The body as received (possibly in a `Content-Encoding`).
    pub body: Bytes,
}

impl ReplayRequest {
    /// The host without a port.
    pub fn host_name(&self) -> &str {
        Authority::parse(&self.host).host
    }

    /// `METHOD host/path`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {}{}", self.method, self.host_name(), self.path)
    }
}
