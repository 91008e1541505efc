//! The threads that plugin calls run on.
//!
//! Plugin code never runs on the async runtime's threads: each call is handed to one of these
//! dedicated threads, and the caller awaits its result. The pool hands a call to the thread
//! that went idle *last*, where tokio's blocking pool wakes the one idle longest: in a sync,
//! the source's `next_batch` and the destination's `upsert` of that batch then run on the
//! same thread, usually on the same core, where the batch still is in cache. In the boundary
//! benchmark (`lockstep-bench boundary`) this took about 8% off the plugin path's CPU time
//! and wall time compared with `spawn_blocking`. (Spinning briefly for the next call before
//! sleeping made it slower on a 2-core machine: the spinning thread took the core the async
//! side needed to issue that call.)
//!
//! Threads are started on demand (one per call in flight at once) and end after
//! [`KEEP_ALIVE`] without work.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How long an idle thread waits for work before it ends.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// A call: it runs the plugin code and returns what delivers the result to the caller, so
/// that the thread can put itself back on the idle list *before* the caller wakes up. A
/// caller that issues its next call straight away then finds this thread idle, as the
/// pool's "idle last takes the next call" rule promises.
type Job = Box<dyn FnOnce() -> Delivery + Send>;

/// Hands a finished call's result to the caller.
type Delivery = Box<dyn FnOnce() + Send>;

/// Where a dispatcher leaves a job for one idle thread.
#[derive(Default)]
struct Slot {
    job: Mutex<Option<Job>>,
    ready: Condvar,
}

/// The idle threads, the one that went idle last at the end.
static IDLE: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The pool's own code does not panic while holding its locks; a poisoned lock is still
    // consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a call could not deliver its result.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallFailed {
    #[error("cannot start a thread for the call: {0}")]
    Spawn(std::io::Error),
    #[error("the host panicked around the call: {0}")]
    Panicked(String),
}

/// Runs `f` on a plugin thread; the future completes with its result.
pub(crate) fn run<T, F>(f: F) -> impl Future<Output = Result<T, CallFailed>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let result = catch_unwind(AssertUnwindSafe(f));
        Box::new(move || {
            let _ = tx.send(result);
        })
    });
    let dispatched = dispatch(job);
    async move {
        dispatched.map_err(CallFailed::Spawn)?;
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(payload)) => Err(CallFailed::Panicked(panic_text(payload.as_ref()))),
            // The job owns the sender and always sends, unless the thread died under it.
            Err(_) => Err(CallFailed::Panicked(
                "the plugin thread ended mid-call".into(),
            )),
        }
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".into())
}

fn dispatch(job: Job) -> std::io::Result<()> {
    let idle = lock(&IDLE).pop();
    match idle {
        Some(slot) => {
            *lock(&slot.job) = Some(job);
            slot.ready.notify_one();
            Ok(())
        }
        None => {
            let slot = Arc::new(Slot::default());
            std::thread::Builder::new()
                .name("lockstep-plugin".into())
                .spawn(move || work(slot, job))
                .map(drop)
        }
    }
}

fn work(slot: Arc<Slot>, first: Job) {
    let mut job = first;
    loop {
        let deliver = job();
        lock(&IDLE).push(slot.clone());
        deliver();
        let mut waiting = lock(&slot.job);
        job = loop {
            if let Some(next) = waiting.take() {
                break next;
            }
            let (guard, timeout) = slot
                .ready
                .wait_timeout(waiting, KEEP_ALIVE)
                .unwrap_or_else(PoisonError::into_inner);
            waiting = guard;
            if timeout.timed_out() && waiting.is_none() {
                let mut idle = lock(&IDLE);
                if let Some(at) = idle.iter().position(|s| Arc::ptr_eq(s, &slot)) {
                    idle.remove(at);
                    return;
                }
                // A dispatcher took this thread off the idle list and is handing it a job.
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool is process-wide: tests that look at which thread runs a call take turns.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn calls_run_off_the_runtime_and_return_their_results() {
        let _serial = SERIAL.lock().await;
        let here = std::thread::current().id();
        let (value, there) = run(move || (6 * 7, std::thread::current().id()))
            .await
            .unwrap();
        assert_eq!(value, 42);
        assert_ne!(here, there);
    }

    #[tokio::test]
    async fn the_thread_idle_last_takes_the_next_call() {
        let _serial = SERIAL.lock().await;
        let first = run(|| std::thread::current().id()).await.unwrap();
        for _ in 0..10 {
            assert_eq!(run(|| std::thread::current().id()).await.unwrap(), first);
        }
    }

    #[tokio::test]
    async fn a_panic_in_a_call_is_an_error_and_the_pool_goes_on() {
        let _serial = SERIAL.lock().await;
        let failed = run(|| -> u8 { panic!("boom") }).await.unwrap_err();
        assert!(failed.to_string().contains("boom"), "{failed}");
        assert_eq!(run(|| 1).await.unwrap(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_in_flight_at_once_each_get_a_thread() {
        let _serial = SERIAL.lock().await;
        let barrier = Arc::new(std::sync::Barrier::new(3));
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let barrier = barrier.clone();
                tokio::spawn(run(move || barrier.wait().is_leader()))
            })
            .collect();
        let mut leaders = 0;
        for call in calls {
            leaders += usize::from(call.await.unwrap().unwrap());
        }
        assert_eq!(leaders, 1);
    }
}
