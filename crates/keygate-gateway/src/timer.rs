//! Timeouts that are almost always cancelled, at the cost of a clock read.
//!
//! A connection sets a timeout for each request it reads (the header read timeout) and, in
//! the gateway, for each upstream response. Nearly all of them are cancelled: the request
//! comes, the response comes. With a fresh tokio timer each, every request registers an
//! entry in the runtime's timer wheel and removes it again. A [`ConnectionTimer`] keeps one
//! timer for its connection instead, and leaves it armed: a timeout with a later deadline
//! than the armed one only notes its own deadline, and when the timer goes off early it is
//! re-armed for the deadline of the timeout being waited on (once per timeout period, not
//! once per request). A timeout still fires at its own deadline, never earlier, and at most
//! as late as a tokio timer would.
//!
//! The clock is tokio's, so tests that pause time move these timeouts too.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::time::{Instant, Sleep};

/// One connection's timer, shared by its timeouts (cheap to clone: one `Arc`). Its timeouts
/// are awaited by one task, the connection's: the armed timer wakes the task that polled it
/// last.
#[derive(Debug, Clone, Default)]
pub struct ConnectionTimer {
    /// Made on first use, within the runtime that drives the connection.
    armed: Arc<Mutex<Option<Armed>>>,
}

#[derive(Debug)]
struct Armed {
    sleep: Pin<Box<Sleep>>,
    /// The waker `sleep` was last polled with: it wakes that one when it goes off.
    waker: Waker,
}

/// The deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl ConnectionTimer {
    /// A timer of its own, for one connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ready once `deadline` has passed; until then the task of `cx` is woken no later than
    /// at `deadline` (possibly earlier, once, when an older deadline was armed).
    pub fn poll_deadline(&self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        // Armed no later than this deadline, not gone off, and to wake this task: nothing to
        // do (had the deadline passed, the timer would have gone off).
        if let Some(armed) = slot.as_ref()
            && armed.sleep.deadline() <= deadline
            && !armed.sleep.is_elapsed()
            && armed.waker.will_wake(cx.waker())
        {
            return Poll::Pending;
        }
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        let armed = slot.get_or_insert_with(|| Armed {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            waker: cx.waker().clone(),
        });
        if !armed.waker.will_wake(cx.waker()) {
            armed.waker = cx.waker().clone();
        }
        // Armed for later than this deadline, or already gone off: arm it for this one.
        if armed.sleep.deadline() > deadline || armed.sleep.is_elapsed() {
            armed.sleep.as_mut().reset(deadline);
        }
        if armed.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // It went off at an earlier deadline: arm it for this one.
        armed.sleep.as_mut().reset(deadline);
        armed.sleep.as_mut().poll(cx)
    }

    /// `future`'s output, or [`Elapsed`] if `deadline` passes first.
    pub async fn timeout_at<F: Future>(
        &self,
        deadline: Instant,
        future: F,
    ) -> Result<F::Output, Elapsed> {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                return Poll::Ready(Ok(output));
            }
            self.poll_deadline(deadline, cx).map(|()| Err(Elapsed))
        })
        .await
    }
}

/// A timeout of a [`ConnectionTimer`], as hyper's connections take them.
struct ConnectionSleep {
    timer: ConnectionTimer,
    deadline: Instant,
}

impl Future for ConnectionSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.timer.poll_deadline(self.deadline, cx)
    }
}

impl hyper::rt::Sleep for ConnectionSleep {}

impl hyper::rt::Timer for ConnectionTimer {
    fn sleep(&self, duration: std::time::Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(ConnectionSleep {
            timer: self.clone(),
            deadline: Instant::now() + duration,
        })
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(ConnectionSleep {
            timer: self.clone(),
            deadline: Instant::from_std(deadline),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<ConnectionSleep>() {
            Some(mut sleep) => sleep.deadline = Instant::from_std(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    /// A timeout at `deadline` for a request that never gets its answer.
    fn unanswered(
        timer: &ConnectionTimer,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), Elapsed>> + '_ {
        timer.timeout_at(deadline, std::future::pending::<()>())
    }

    /// Polls `future` once.
    fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        Pin::new(future).poll(&mut Context::from_waker(waker))
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_fires_at_its_own_deadline_whatever_was_armed_before() {
        let timer = ConnectionTimer::new();
        let start = Instant::now();
        // An early timeout arms the timer for 10 s, and is then dropped (its request came).
        let mut first = Box::pin(unanswered(&timer, start + Duration::from_secs(10)));
        assert!(poll_once(&mut first).is_pending());
        drop(first);
        // A later one, 5 s on, with a 10 s timeout of its own: not at 10 s, at 15 s.
        tokio::time::advance(Duration::from_secs(5)).await;
        let second = unanswered(&timer, start + Duration::from_secs(15));
        assert_eq!(second.await, Err(Elapsed));
        assert_eq!(Instant::now() - start, Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_than_the_armed_one_is_kept() {
        let timer = ConnectionTimer::new();
        let start = Instant::now();
        let mut long = Box::pin(unanswered(&timer, start + Duration::from_secs(60)));
        assert!(poll_once(&mut long).is_pending());
        let short = unanswered(&timer, start + Duration::from_secs(2));
        assert_eq!(short.await, Err(Elapsed));
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_finishes_in_time_gives_its_output() {
        let timer = ConnectionTimer::new();
        let deadline = Instant::now() + Duration::from_secs(1);
        let answer = timer.timeout_at(deadline, async {
            tokio::time::sleep(Duration::from_millis(999)).await;
            7
        });
        assert_eq!(answer.await, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn hyper_sleeps_reset_to_a_new_deadline() {
        use hyper::rt::Timer as _;
        let timer = ConnectionTimer::new();
        let start = Instant::now();
        let mut sleep = timer.sleep(Duration::from_secs(1));
        timer.reset(&mut sleep, (start + Duration::from_secs(3)).into_std());
        sleep.await;
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
    }
}
