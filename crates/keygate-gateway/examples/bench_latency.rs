//! The fixed-rate client of `bench/gateway.sh`: the latency a server adds below saturation,
//! where a closed-loop tool such as wrk measures only its queue (at saturation the latency of
//! N connections is N over the throughput).
//!
//! `bench_latency URL RATE CONNECTIONS SECONDS [HEADER:VALUE ...]` sends GET URL at RATE
//! requests per second in all, dealt out in turn over CONNECTIONS keep-alive connections,
//! each request due at a fixed time (an open-loop schedule, like wrk2's). A request's latency
//! runs from when it was due to when its whole answer was read, so a request that waited
//! behind a slow one on its connection counts its wait (no coordinated omission). The first
//! tenth of the run warms up and is not counted. Prints one line:
//! `requests N p50_us A p90_us B p99_us C p999_us D max_us E`; exits 1 if any answer is not
//! 2xx or a connection fails, 2 on bad arguments. Pacing spins on the runtime's thread (with
//! yields), so the client's CPU is busy for the whole run: pin it to a CPU of its own.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

struct Args {
    uri: Uri,
    rate: f64,
    connections: usize,
    duration: Duration,
    headers: Vec<(HeaderName, HeaderValue)>,
}

fn parse_args() -> Result<Args, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        return Err("usage: bench_latency URL RATE CONNECTIONS SECONDS [HEADER:VALUE ...]".into());
    }
    let uri: Uri = args[0].parse().map_err(|e| format!("URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err("URL: an http:// URL with a host and port".into());
    }
    let rate: f64 = args[1].parse().map_err(|e| format!("RATE: {e}"))?;
    let connections: usize = args[2].parse().map_err(|e| format!("CONNECTIONS: {e}"))?;
    let seconds: f64 = args[3].parse().map_err(|e| format!("SECONDS: {e}"))?;
    if !(rate > 0.0 && rate <= 1e6) || connections == 0 || !(seconds > 0.0 && seconds <= 3600.0) {
        return Err("RATE in (0, 1e6], CONNECTIONS > 0, SECONDS in (0, 3600]".into());
    }
    let mut headers = Vec::new();
    for header in &args[4..] {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("{header:?}: HEADER:VALUE"))?;
        headers.push((
            HeaderName::try_from(name.trim()).map_err(|e| format!("{name:?}: {e}"))?,
            HeaderValue::try_from(value.trim()).map_err(|e| format!("{name:?}: {e}"))?,
        ));
    }
    Ok(Args {
        uri,
        rate,
        connections,
        duration: Duration::from_secs_f64(seconds),
        headers,
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(authority: &str) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(driver);
    Ok(sender)
}

/// One connection: sends a request for each due time it is handed, in order, and returns the
/// latencies (µs) of those due after `counted_from`. Connects again when the server has
/// closed the connection (nginx does after 1,000 requests), as wrk does.
async fn connection(
    args: &Args,
    mut due: mpsc::UnboundedReceiver<Instant>,
    counted_from: Instant,
) -> Result<Vec<u32>, String> {
    let authority = args.uri.authority().expect("checked").as_str().to_owned();
    let mut sender = connect(&authority).await?;
    let mut latencies = Vec::new();
    while let Some(at) = due.recv().await {
        let mut request = Request::get(args.uri.clone())
            .header(http::header::HOST, &authority)
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        for (name, value) in &args.headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        if sender.ready().await.is_err() {
            sender = connect(&authority).await?;
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        if at >= counted_from {
            let micros = at.elapsed().as_micros();
            latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
    }
    Ok(latencies)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bench_latency: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let args = Box::leak(Box::new(args));
    let result = runtime.block_on(async move {
        let mut queues = Vec::with_capacity(args.connections);
        let mut tasks = Vec::with_capacity(args.connections);
        let start = Instant::now() + Duration::from_millis(100);
        let counted_from = start + args.duration / 10;
        for _ in 0..args.connections {
            let (tx, rx) = mpsc::unbounded_channel();
            queues.push(tx);
            let args = &*args;
            tasks.push(tokio::spawn(connection(args, rx, counted_from)));
        }
        let interval = Duration::from_secs_f64(1.0 / args.rate);
        let total = (args.duration.as_secs_f64() * args.rate).round() as u64;
        for n in 0..total {
            let at = start + interval.mul_f64(n as f64);
            // Spin (yielding to the connections) until the request is due: tokio's timers
            // tick by the millisecond, too coarse for a schedule of tens of microseconds.
            while Instant::now() < at {
                tokio::task::yield_now().await;
            }
            let queue = &queues[(n as usize) % queues.len()];
            if queue.send(at).is_err() {
                break; // that connection failed: its error is reported below
            }
        }
        drop(queues);
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.map_err(|e| e.to_string())??);
        }
        Ok::<_, String>(latencies)
    });
    let mut latencies = match result {
        Ok(latencies) if !latencies.is_empty() => latencies,
        Ok(_) => {
            eprintln!("bench_latency: no request was counted");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("bench_latency: {e}");
            std::process::exit(1);
        }
    };
    latencies.sort_unstable();
    println!(
        "requests {} p50_us {} p90_us {} p99_us {} p999_us {} max_us {}",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 99.9),
        latencies[latencies.len() - 1],
    );
}
