//! The response body sent to a client — the upstream's, streamed frame by frame as it comes,
//! or one the gateway wrote (a refusal, an error) — and the access-log line written when it is
//! done: finished, broken off by the upstream, or dropped because the client went away.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use keygate::ApiKey;
use pin_project_lite::pin_project;

use crate::proxy::Proxy;

/// Any error of a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// A response body on its way to the client.
    #[derive(Debug)]
    pub struct ResponseBody {
        #[pin]
        inner: Inner,
        log: Option<AccessLog>,
    }

    impl PinnedDrop for ResponseBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let ended = this.inner.as_ref().ended();
            // The line itself is written as the log is dropped, right after this.
            if let Some(log) = this.log.as_mut() {
                log.complete |= ended;
            }
        }
    }
}

pin_project! {
    #[project = InnerProj]
    #[derive(Debug)]
    enum Inner {
        Upstream { #[pin] body: Incoming },
        Local { #[pin] body: axum::body::Body },
    }
}

impl Inner {
    fn ended(&self) -> bool {
        match self {
            Inner::Upstream { body } => body.is_end_stream(),
            Inner::Local { body } => body.is_end_stream(),
        }
    }
}

impl ResponseBody {
    /// The upstream's body, streamed.
    pub fn upstream(body: Incoming, log: Option<AccessLog>) -> Self {
        Self {
            inner: Inner::Upstream { body },
            log,
        }
    }

    /// A body the gateway wrote.
    pub fn local(body: axum::body::Body, log: Option<AccessLog>) -> Self {
        Self {
            inner: Inner::Local { body },
            log,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled: Poll<Option<Result<Frame<Bytes>, BoxError>>> = match this.inner.project() {
            InnerProj::Upstream { body } => body.poll_frame(cx).map_err(Into::into),
            InnerProj::Local { body } => body.poll_frame(cx).map_err(Into::into),
        };
        if let Some(log) = this.log.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        log.bytes += data.len() as u64;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    if !log.upstream_failed {
                        log.upstream_failed = true;
                        if let Some(route) = log.route {
                            log.proxy.metrics.body_error(route);
                        }
                        tracing::warn!(request_id = ?log.request_id, error = %e, "the upstream's response body broke off; closing the client's connection");
                    }
                }
                Poll::Ready(None) => log.complete = true,
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.ended()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream { body } => body.size_hint(),
            Inner::Local { body } => body.size_hint(),
        }
    }
}

/// One request's access-log line: written when it is dropped — with the response body once
/// that is done, or with the request if the client went away before the response started.
/// Never the key, the path or the query string: the route's name says where it went.
#[derive(Debug)]
pub struct AccessLog {
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) request_id: HeaderValue,
    pub(crate) method: Method,
    pub(crate) started: Instant,
    pub(crate) route: Option<usize>,
    pub(crate) key: Option<ApiKey>,
    pub(crate) status: u16,
    pub(crate) upstream_latency: Option<Duration>,
    pub(crate) bytes: u64,
    pub(crate) complete: bool,
    pub(crate) upstream_failed: bool,
}

impl AccessLog {
    /// The line for a request that has just arrived.
    pub(crate) fn new(proxy: Arc<Proxy>, request_id: HeaderValue, method: Method) -> Self {
        Self {
            proxy,
            request_id,
            method,
            started: Instant::now(),
            route: None,
            key: None,
            status: 0,
            upstream_latency: None,
            bytes: 0,
            complete: false,
            upstream_failed: false,
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let body = if self.upstream_failed {
            "upstream_error"
        } else if self.complete {
            "complete"
        } else {
            "aborted"
        };
        let record = AccessRecord {
            request_id: self.request_id.to_str().unwrap_or("-"),
            method: self.method.as_str(),
            route: self
                .route
                .and_then(|r| self.proxy.route_names.get(r))
                .map_or("-", String::as_str),
            key_id: self.key.as_ref().map_or("-", |k| k.id().as_str()),
            status: self.status,
            upstream: self.upstream_latency,
            duration: self.started.elapsed(),
            bytes: self.bytes,
            body,
        };
        self.proxy.access_log.log(&record);
    }
}

/// One finished request, as the access log receives it: never the key, the path or the
/// query string (the route's name says where it went).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessRecord<'a> {
    /// The request id (`X-Request-Id`).
    pub request_id: &'a str,
    /// The request method.
    pub method: &'a str,
    /// The route's name, `-` when no route matched.
    pub route: &'a str,
    /// The verified key's id, `-` when none was.
    pub key_id: &'a str,
    /// The status sent to the client.
    pub status: u16,
    /// How long the upstream took to answer with its headers, when it was asked.
    pub upstream: Option<Duration>,
    /// From the request's arrival to the end of its response body.
    pub duration: Duration,
    /// Response body bytes sent.
    pub bytes: u64,
    /// How the response body ended: `complete`, `aborted` (the client went away) or
    /// `upstream_error` (the upstream broke it off).
    pub body: &'static str,
}

/// Where the gateway's access-log lines go.
pub trait AccessLogger: Send + Sync + std::fmt::Debug + 'static {
    /// Logs one finished request.
    fn log(&self, record: &AccessRecord<'_>);
}

/// The default access log: one `tracing` event per request, target `keygate_gateway::access`,
/// message `request`, the record's fields as event fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingAccessLog;

impl AccessLogger for TracingAccessLog {
    fn log(&self, record: &AccessRecord<'_>) {
        tracing::info!(
            target: "keygate_gateway::access",
            request_id = record.request_id,
            method = %record.method,
            route = record.route,
            key_id = record.key_id,
            status = record.status,
            upstream_ms = record.upstream.map(|d| d.as_secs_f64() * 1000.0),
            duration_ms = record.duration.as_secs_f64() * 1000.0,
            bytes = record.bytes,
            body = record.body,
            "request"
        );
    }
}
