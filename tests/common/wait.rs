//! Waiting on what a test can observe: poll a condition until it holds,
//! with a generous bound (these check behaviour, not speed: speed is
//! measured by the benches in benches/, see docs/benchmarks.md).
//!
//! A check that something did *not* happen first waits on a positive marker
//! (a later Event, a later object handled, a counter moving), then asserts
//! the absence: never a sleep that hopes the system has settled.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// How long a condition the system under test must bring about may take.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `f` until it returns `Some`, for at most [`PATIENCE`]; panics
/// naming `what` otherwise.
pub async fn until<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    until_within(what, PATIENCE, f).await
}

/// [`until`] with another bound.
pub async fn until_within<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `f` (blocking the thread) until it returns `Ok`, or panics with
/// `what` and the last `Err` seen after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Result<T, String>) -> T {
    poll(what, timeout, Duration::from_millis(200), f)
}

/// Polls `cond` (blocking the thread, every 50 ms) until it holds, or
/// panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    poll(what, timeout, Duration::from_millis(50), || {
        cond().then_some(()).ok_or_else(|| "false".to_string())
    })
}

fn poll<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}
