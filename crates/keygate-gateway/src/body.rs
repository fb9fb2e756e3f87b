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

use crate::metrics::Metrics;

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
                            log.metrics.body_error(route);
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
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) route_names: Arc<[String]>,
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
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        route_names: Arc<[String]>,
        request_id: HeaderValue,
        method: Method,
    ) -> Self {
        Self {
            metrics,
            route_names,
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
        let route = self
            .route
            .and_then(|r| self.route_names.get(r))
            .map_or("-", String::as_str);
        let key_id = self.key.as_ref().map_or("-", |k| k.id().as_str());
        tracing::info!(
            target: "keygate_gateway::access",
            request_id = self.request_id.to_str().unwrap_or("-"),
            method = %self.method,
            route,
            key_id,
            status = self.status,
            upstream_ms = self.upstream_latency.map(|d| d.as_secs_f64() * 1000.0),
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            bytes = self.bytes,
            body,
            "request"
        );
    }
}
