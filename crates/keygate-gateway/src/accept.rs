//! Accepting and serving HTTP/1.1 connections within bounds, and shutting down gracefully.
//! Nothing here is specific to the gateway: any hyper service can be served this way.
//!
//! - At most `max_connections` client connections at once: when the cap is reached the loop
//!   stops accepting (new connections wait in the kernel's backlog), says so in the log (at
//!   most every 10 s) and counts it; it accepts again as soon as a connection ends.
//! - A client must send its request headers within `header_read_timeout`; hyper applies the
//!   same timer to a keep-alive connection waiting for its next request, so idle connections
//!   are closed after it too.
//! - An `accept` error (out of file descriptors, say) is logged and counted, and the loop backs
//!   off (5 ms doubling to 1 s) rather than exit or spin.
//! - On shutdown the listener is closed at once; connections finish the request they are
//!   serving (streams included) and close; upgraded connections (WebSocket) and any other work
//!   holding a [`Tracker`] go on until `shutdown_grace` is over, when everything still open is
//!   cut.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

/// The bounds a server keeps.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most time to receive a request's headers (and to wait for the next request).
    pub header_read_timeout: Duration,
    /// On shutdown, how long open requests and streams may go on.
    pub shutdown_grace: Duration,
}

/// Connection counters.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    accepted: AtomicU64,
    open: AtomicU64,
    limit_reached: AtomicU64,
    accept_errors: AtomicU64,
}

impl ConnectionStats {
    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Appends the Prometheus text for these counters, named `<prefix>_connections_*`.
    pub fn render(&self, prefix: &str, out: &mut String) {
        use std::fmt::Write;
        for (name, kind, help, value) in [
            (
                "connections_accepted_total",
                "counter",
                "Client connections accepted.",
                &self.accepted,
            ),
            (
                "connections_open",
                "gauge",
                "Client connections open now.",
                &self.open,
            ),
            (
                "connection_limit_reached_total",
                "counter",
                "Times the connection cap stopped the server from accepting.",
                &self.limit_reached,
            ),
            (
                "accept_errors_total",
                "counter",
                "Failed accept calls (e.g. out of file descriptors).",
                &self.accept_errors,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {prefix}_{name} {help}\n# TYPE {prefix}_{name} {kind}\n{prefix}_{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
}

/// Descriptors kept back from the connection cap: the database pool, log files, outgoing
/// webhook and upstream connections, the listener itself.
const RESERVED_DESCRIPTORS: u64 = 64;

/// The connection cap this process can keep: `wanted`, unless the limit on open file
/// descriptors is lower. Raises the soft limit to the hard one first (as servers commonly
/// do), then leaves [`RESERVED_DESCRIPTORS`] for everything else, so that the cap is reached
/// (logged, counted, connections wait in the backlog) before `accept` runs out of descriptors.
pub fn connection_cap(wanted: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    let Some(descriptors) = limit.current else {
        return wanted;
    };
    let budget = usize::try_from(descriptors.saturating_sub(RESERVED_DESCRIPTORS).max(1))
        .unwrap_or(usize::MAX);
    if budget < wanted {
        tracing::warn!(
            max_connections = wanted,
            open_file_limit = descriptors,
            cap = budget,
            "the open-file limit is lower than max_connections: capping connections at {budget}"
        );
    }
    wanted.min(budget)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    Draining,
    Cut,
}

/// Held by a connection or any work it started (a WebSocket tunnel): shutdown waits for
/// every tracker to be dropped, up to the grace period, and then tells them to stop.
#[derive(Debug, Clone)]
pub struct Tracker {
    phase: watch::Receiver<Phase>,
    _alive: mpsc::Sender<()>,
}

impl Tracker {
    /// Resolves once shutdown has begun.
    pub async fn draining(&self) {
        let mut phase = self.phase.clone();
        let _ = phase.wait_for(|p| *p >= Phase::Draining).await;
    }

    /// Resolves once the grace period is over: stop now.
    pub async fn cut(&self) {
        let mut phase = self.phase.clone();
        let _ = phase.wait_for(|p| *p >= Phase::Cut).await;
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` resolves, then shuts down gracefully (see
/// the module docs). `service` makes the service for each connection from its peer address
/// and a [`Tracker`] (clone it into any task that must finish before the process exits).
pub async fn serve<F, S, B>(
    listener: TcpListener,
    limits: &Limits,
    stats: Arc<ConnectionStats>,
    mut service: F,
    shutdown: impl Future<Output = ()>,
) where
    F: FnMut(SocketAddr, Tracker) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let local = listener.local_addr().ok();
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    let mut last_full_warning: Option<std::time::Instant> = None;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                stats.limit_reached.fetch_add(1, Ordering::Relaxed);
                // Said at most every 10 s: a flood must not flood the log too.
                if last_full_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    last_full_warning = Some(std::time::Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached: new connections wait until one closes"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = Duration::from_millis(5);
                    accepted
                }
                Err(e) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let tracker = Tracker {
            phase: phase_rx.clone(),
            _alive: alive_tx.clone(),
        };
        let connection = builder
            .serve_connection(TokioIo::new(stream), service(peer, tracker.clone()))
            .with_upgrades();
        let stats = stats.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = tracker.draining() => {
                    // Finish the request in flight (if any), then close.
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        ended = connection.as_mut() => ended,
                        () = tracker.cut() => Ok(()),
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    drop(alive_tx);
    let _ = phase_tx.send(Phase::Draining);
    tracing::info!(
        addr = ?local,
        open_connections = stats.open(),
        grace_s = limits.shutdown_grace.as_secs_f64(),
        "stopped accepting; finishing open requests and streams"
    );
    if tokio::time::timeout(limits.shutdown_grace, alive_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            addr = ?local,
            open_connections = stats.open(),
            "shutdown grace period over: cutting what is still open"
        );
        let _ = phase_tx.send(Phase::Cut);
        // The tasks stop at their next poll; give them a moment to close their sockets.
        let _ = tokio::time::timeout(Duration::from_secs(1), alive_rx.recv()).await;
    }
}
