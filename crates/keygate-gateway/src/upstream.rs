//! Connections to the upstreams, kept alive (HTTP/1.1) and reused.
//!
//! A client connection keeps the upstream connections its requests used ([`Upstreams`]) and
//! sends its next request for the same upstream on the same connection. HTTP/1.1 has at most
//! one request in flight per client connection, so a request finds its connection without
//! searching, hashing or locking a shared pool. When the client connection closes, its idle
//! upstream connections go to a shared pool ([`IdlePool`]) that new client connections take
//! from, so clients that open a connection per request do not cost a connection upstream each.
//!
//! A connection is dropped rather than reused once it has been idle for the pool's idle
//! timeout, or when the upstream has closed it. A request sent on a reused connection that
//! turns out to be closed before the request went out is sent once more on a new connection.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::body::BoxError;

/// Why a request got no response from its upstream.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// No connection could be made (refused, unreachable, or the connect timeout).
    Connect(BoxError),
    /// The connection failed or closed before a response came.
    Exchange(hyper::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connecting: {e}"),
            Self::Exchange(e) => write!(f, "exchanging: {e}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => Some(e.as_ref()),
            Self::Exchange(e) => Some(e),
        }
    }
}

/// An open upstream connection and the upstream it goes to.
struct Open<B> {
    authority: Authority,
    sender: SendRequest<B>,
    idle_since: Instant,
}

impl<B> Open<B> {
    /// Whether this connection goes to `authority`, as the configuration spells it (the same
    /// text: not `Authority`'s comparison, which ignores case byte by byte).
    fn goes_to(&self, authority: &Authority) -> bool {
        self.authority.as_str() == authority.as_str()
    }
}

/// Idle upstream connections left by client connections that closed, and how new ones are
/// made.
#[derive(Debug)]
pub(crate) struct IdlePool<B> {
    idle: Mutex<Vec<Open<B>>>,
    connector: HttpConnector,
    idle_timeout: Duration,
    max_idle: usize,
}

impl<B> std::fmt::Debug for Open<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Open")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl<B> IdlePool<B> {
    /// A pool keeping at most `max_idle` idle connections, each for at most `idle_timeout`.
    pub(crate) fn new(connector: HttpConnector, idle_timeout: Duration, max_idle: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            connector,
            idle_timeout,
            max_idle,
        }
    }

    fn usable(&self, open: &Open<B>, now: Instant) -> bool {
        !open.sender.is_closed() && now.duration_since(open.idle_since) < self.idle_timeout
    }

    /// An idle connection to `authority`, the most recently used one.
    fn take(&self, authority: &Authority) -> Option<Open<B>> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|open| self.usable(open, now));
        let found = idle.iter().rposition(|open| open.goes_to(authority))?;
        Some(idle.swap_remove(found))
    }

    /// Keeps `connections` for other client connections, within the bounds.
    fn put(&self, connections: impl Iterator<Item = Open<B>>) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|open| self.usable(open, now));
        for open in connections {
            if idle.len() >= self.max_idle {
                break;
            }
            if self.usable(&open, now) {
                idle.push(open);
            }
        }
    }

    /// Idle connections in the pool now.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.lock().unwrap().len()
    }
}

impl<B> IdlePool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A new connection to `authority`, its connection task spawned.
    async fn connect(&self, authority: &Authority) -> Result<SendRequest<B>, UpstreamError> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        let io = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(UpstreamError::Exchange)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// The upstream connections of one client connection; on drop, the idle ones go to the pool.
#[derive(Debug)]
pub(crate) struct Upstreams<B> {
    pool: Arc<IdlePool<B>>,
    held: Mutex<Vec<Open<B>>>,
}

impl<B> Upstreams<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(pool: Arc<IdlePool<B>>) -> Self {
        Self {
            pool,
            held: Mutex::new(Vec::new()),
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) to `authority` at `now` and waits for the
    /// response head, on this client connection's connection to it, an idle one from the pool,
    /// or a new one.
    pub(crate) async fn send(
        &self,
        authority: &Authority,
        mut request: Request<B>,
        now: Instant,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut reused = self.take(authority, now);
        loop {
            let was_reused = reused.is_some();
            let mut sender = match reused.take() {
                Some(mut open) => match open.sender.ready().await {
                    Ok(()) => open.sender,
                    // Closed by the upstream while idle: make a new one.
                    Err(_) => self.pool.connect(authority).await?,
                },
                None => self.pool.connect(authority).await?,
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.keep(authority, sender);
                    return Ok(response);
                }
                Err(mut failed) => match failed.take_message() {
                    // Not sent: the connection closed first. Once more, on a new connection.
                    Some(unsent) if was_reused => request = unsent,
                    _ => return Err(UpstreamError::Exchange(failed.into_error())),
                },
            }
        }
    }

    fn take(&self, authority: &Authority, now: Instant) -> Option<Open<B>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let own = held
            .iter()
            .position(|open| open.goes_to(authority))
            .map(|found| held.swap_remove(found));
        drop(held);
        // The pool's rule for a connection worth reusing, else one from the pool.
        match own {
            Some(open) if self.pool.usable(&open, now) => Some(open),
            _ => self.pool.take(authority),
        }
    }

    fn keep(&self, authority: &Authority, sender: SendRequest<B>) {
        let open = Open {
            authority: authority.clone(),
            sender,
            idle_since: Instant::now(),
        };
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(open);
    }
}

impl<B> Drop for Upstreams<B> {
    fn drop(&mut self) {
        let held = std::mem::take(self.held.get_mut().unwrap_or_else(|p| p.into_inner()));
        if !held.is_empty() {
            self.pool.put(held.into_iter());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::BodyExt as _;
    use hyper::server::conn::http1 as server;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A real upstream on port 0 that answers each request with the number of the connection
    /// it came on, and closes a connection after `requests_per_connection` requests.
    async fn upstream(requests_per_connection: usize) -> (Authority, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let number = count.fetch_add(1, Ordering::SeqCst) + 1;
                let served = Arc::new(AtomicUsize::new(0));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_request| {
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            let mut response = Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(number.to_string()),
                            ));
                            if n >= requests_per_connection {
                                response.headers_mut().insert(
                                    http::header::CONNECTION,
                                    http::HeaderValue::from_static("close"),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = server::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (authority, connections)
    }

    fn pool(idle_timeout: Duration) -> Arc<IdlePool<Empty>> {
        Arc::new(IdlePool::new(HttpConnector::new(), idle_timeout, 4))
    }

    type Empty = http_body_util::Empty<bytes::Bytes>;

    fn empty_request(authority: &Authority) -> Request<Empty> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, authority.as_str())
            .body(Empty::new())
            .unwrap()
    }

    async fn body(response: Response<Incoming>) -> String {
        String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_client_connection_reuses_its_upstream_connection_and_leaves_it_to_the_next() {
        let (authority, connections) = upstream(usize::MAX).await;
        let pool = pool(Duration::from_secs(60));
        let first = Upstreams::new(pool.clone());
        for _ in 0..3 {
            let response = first
                .send(&authority, empty_request(&authority), Instant::now())
                .await
                .unwrap();
            assert_eq!(body(response).await, "1");
        }
        assert_eq!(pool.idle(), 0, "held by its client connection");
        drop(first);
        assert_eq!(
            pool.idle(),
            1,
            "left to the pool when the client connection closed"
        );
        let second = Upstreams::new(pool.clone());
        let response = second
            .send(&authority, empty_request(&authority), Instant::now())
            .await
            .unwrap();
        assert_eq!(body(response).await, "1", "taken from the pool");
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_or_left_idle_too_long_is_replaced() {
        // The upstream closes each connection after one request.
        let (authority, connections) = upstream(1).await;
        let upstreams = Upstreams::new(pool(Duration::from_secs(60)));
        for expected in ["1", "2", "3"] {
            let response = upstreams
                .send(&authority, empty_request(&authority), Instant::now())
                .await
                .unwrap();
            assert_eq!(body(response).await, expected);
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);

        // An idle timeout of zero: never reused, neither held nor pooled.
        let (authority, connections) = upstream(usize::MAX).await;
        let pool = pool(Duration::ZERO);
        let upstreams = Upstreams::new(pool.clone());
        for expected in ["1", "2"] {
            let response = upstreams
                .send(&authority, empty_request(&authority), Instant::now())
                .await
                .unwrap();
            assert_eq!(body(response).await, expected);
        }
        drop(upstreams);
        assert_eq!(pool.idle(), 0);
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn no_upstream_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        drop(listener);
        let upstreams = Upstreams::new(pool(Duration::from_secs(60)));
        let failed = upstreams
            .send(&authority, empty_request(&authority), Instant::now())
            .await;
        assert!(
            matches!(failed, Err(UpstreamError::Connect(_))),
            "{failed:?}"
        );
    }
}
