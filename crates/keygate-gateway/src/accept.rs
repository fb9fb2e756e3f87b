//! Accepting and serving HTTP/1.1 connections within bounds, and shutting down gracefully.
//! Nothing here is specific to the gateway: any hyper service can be served this way.
//!
//! - At most `max_connections` client connections at once: when the cap is reached the loop
//!   stops accepting (new connections wait in the kernel's backlog), says so in the log (at
//!   most every 10 s) and counts it; it accepts again as soon as a connection ends.
//! - A client must send its request headers within `header_read_timeout`; hyper applies the
//!   same timer to a keep-alive connection waiting for its next request, so idle connections
//!   are closed after it too. These timeouts run on one [`ConnectionTimer`] per connection.
//! - An `accept` error (out of file descriptors, say) is logged and counted, and the loop backs
//!   off (5 ms doubling to 1 s) rather than exit or spin.
//! - Connections can be served on [`Workers`]: threads with a single-threaded runtime each,
//!   connections dealt out to them in turn (nginx's worker processes, as threads).
//! - On shutdown the listener is closed at once; connections finish the request they are
//!   serving (streams included) and close; upgraded connections (WebSocket) and any other work
//!   holding a [`Tracker`] go on until `shutdown_grace` is over, when everything still open is
//!   cut.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::timer::ConnectionTimer;

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

/// Threads that serve connections, each running a single-threaded runtime of its own: a
/// connection, its requests and the tasks they start (upstream connections) stay on one
/// thread, where tasks that wake one another run in turn instead of being handed between
/// threads. The threads end when this is dropped (tasks still on them are dropped).
#[derive(Debug)]
pub struct Workers {
    runtimes: Vec<tokio::runtime::Handle>,
    next: AtomicU64,
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `count` worker threads (at least one), named `<name>-<n>`.
    pub fn start(name: &str, count: usize) -> std::io::Result<Self> {
        let count = count.max(1);
        let mut runtimes = Vec::with_capacity(count);
        let mut stop = Vec::with_capacity(count);
        for n in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtimes.push(runtime.handle().clone());
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            stop.push(stop_tx);
            std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || {
                    let _ = runtime.block_on(stop_rx);
                })?;
        }
        Ok(Self {
            runtimes,
            next: AtomicU64::new(0),
            _stop: stop,
        })
    }

    /// As many workers as this process may use CPUs (its affinity and quota).
    pub fn per_cpu(name: &str) -> std::io::Result<Self> {
        Self::start(
            name,
            std::thread::available_parallelism().map_or(1, usize::from),
        )
    }

    /// The number of worker threads.
    pub fn count(&self) -> usize {
        self.runtimes.len()
    }

    /// The next worker's runtime, in turn.
    fn next(&self) -> &tokio::runtime::Handle {
        let n = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        &self.runtimes[n % self.runtimes.len()]
    }
}

/// A future that is polled only once it has woken its task (and the first time). Beside a
/// busy future in a `select!` (a connection, polled for every read and write), a rarely ready
/// one (shutdown) then costs a flag check per poll instead of a poll of its own.
struct WhenWoken<F> {
    inner: Pin<Box<F>>,
    signal: Arc<WokenSignal>,
    waker: Waker,
}

#[derive(Debug)]
struct WokenSignal {
    woken: AtomicBool,
    /// The task to wake on its behalf.
    task: std::sync::Mutex<Option<Waker>>,
}

impl Wake for WokenSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl<F: Future> WhenWoken<F> {
    fn new(inner: F) -> Self {
        let signal = Arc::new(WokenSignal {
            woken: AtomicBool::new(true),
            task: std::sync::Mutex::new(None),
        });
        Self {
            inner: Box::pin(inner),
            waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

impl<F: Future> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        {
            let mut task = self.signal.task.lock().unwrap_or_else(|p| p.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        if !self.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        this.inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` resolves, then shuts down gracefully (see
/// the module docs). `service` makes the service for each connection from its peer address
/// and a [`Tracker`] (clone it into any task that must finish before the process exits).
/// Connections are served on `workers`, or as tasks of the calling runtime.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    limits: &Limits,
    stats: Arc<ConnectionStats>,
    workers: Option<&Workers>,
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
        let service = service(peer, tracker.clone());
        let mut builder = builder.clone();
        // The header read timeout of each request, on one timer per connection.
        builder.timer(ConnectionTimer::new());
        let stats = stats.clone();
        let serve_one = move |stream: std::io::Result<TcpStream>| async move {
            let _slot = slot;
            match stream {
                Ok(stream) => {
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::pin!(connection);
                    let ended = tokio::select! {
                        biased;
                        ended = connection.as_mut() => ended,
                        () = WhenWoken::new(tracker.draining()) => {
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
                }
                Err(e) => {
                    tracing::warn!(error = %e, %peer, "could not hand a connection to a worker")
                }
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
        };
        match workers {
            None => {
                tokio::spawn(serve_one(Ok(stream)));
            }
            Some(workers) => {
                // Moved to the worker's runtime: registered with its I/O driver there.
                let stream = stream.into_std();
                workers.next().spawn(async move {
                    serve_one(stream.and_then(TcpStream::from_std)).await;
                });
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::{BodyExt as _, Empty, Full};
    use hyper_util::rt::TokioIo;

    /// One request on a new connection; the answer's body.
    async fn get(address: SocketAddr) -> String {
        let stream = TcpStream::connect(address).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = Request::builder()
            .uri("/")
            .header(http::header::HOST, "test")
            .body(Empty::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_when_woken_future_is_polled_again_only_after_it_woke_its_task() {
        let (tx, rx) = oneshot::channel::<u8>();
        let polls = Arc::new(AtomicU64::new(0));
        let counted = {
            let polls = polls.clone();
            let mut rx = rx;
            std::future::poll_fn(move |cx| {
                polls.fetch_add(1, Ordering::SeqCst);
                Pin::new(&mut rx).poll(cx)
            })
        };
        let mut future = Box::pin(WhenWoken::new(counted));
        let task = Arc::new(CountingWaker::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        // Polled the first time; then, not woken, not polled.
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
        // The inner future wakes: the task is woken, and the next poll reaches it.
        tx.send(7).unwrap();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(7))));
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_are_dealt_out_to_the_workers_in_turn() {
        let workers = Workers::start("test-worker", 2).unwrap();
        assert_eq!(workers.count(), 2);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 8,
            header_read_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = async {
            serve(
                listener,
                &limits,
                Arc::new(ConnectionStats::default()),
                Some(&workers),
                |_, _| {
                    hyper::service::service_fn(|_request| async {
                        // Which thread serves the connection.
                        let name = std::thread::current().name().unwrap_or("-").to_owned();
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            bytes::Bytes::from(name),
                        )))
                    })
                },
                async {
                    let _ = stop_rx.await;
                },
            )
            .await;
        };
        let client = async {
            let mut served = Vec::new();
            for _ in 0..4 {
                served.push(get(address).await);
            }
            let _ = stop_tx.send(());
            served
        };
        let ((), served) = tokio::join!(server, client);
        assert_eq!(
            served,
            [
                "test-worker-0",
                "test-worker-1",
                "test-worker-0",
                "test-worker-1"
            ]
        );
    }
}
