//! Panic containment, poisoning and cancellation for connector instances.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};

use abi_stable::std_types::RResult;
use lockstep_plugin_api::{ErrorKind, PluginError};
use tokio::sync::Notify;

use crate::error::{ConnectorError, Result};

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces this plugin's panic hook (each cdylib has its own copy of std) with one that
/// records the message and location for the error the host receives, and logs it.
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = payload_text(info.payload());
            let text = match info.location() {
                Some(l) => format!("{message} (at {}:{}:{})", l.file(), l.line(), l.column()),
                None => message,
            };
            tracing::error!(target: "lockstep_plugin_sdk::panic", "connector panicked: {text}");
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
        }));
    });
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// Runs `f`, turning a panic into a `PANIC` error that names the entry point.
pub(crate) fn catch<T>(entry: &str, f: impl FnOnce() -> Result<T>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(e.into()),
        Err(payload) => {
            let text = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| payload_text(payload.as_ref()));
            RResult::RErr(PluginError::new(
                ErrorKind::PANIC,
                format!("the connector panicked in `{entry}`: {text}"),
            ))
        }
    }
}

/// A cancellation flag that async code can wait on.
#[derive(Default)]
pub(crate) struct CancelState {
    cancelled: AtomicBool,
    notify: Notify,
}

impl CancelState {
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    pub(crate) async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// What every object derived from one connector instance shares: its runtime, its
/// cancellation flag and its poison flag.
#[derive(Clone)]
pub(crate) struct Instance {
    runtime: Arc<tokio::runtime::Runtime>,
    pub(crate) cancel: Arc<CancelState>,
    poisoned: Arc<AtomicBool>,
}

impl Instance {
    pub(crate) fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectorError::internal(format!("cannot start a tokio runtime: {e}")))?;
        Ok(Self {
            runtime: Arc::new(runtime),
            cancel: Default::default(),
            poisoned: Default::default(),
        })
    }

    /// Runs one entry point: refuses if poisoned, drives the future on this instance's
    /// runtime until it completes or the instance is cancelled, and contains panics.
    pub(crate) fn call<T, F>(&self, entry: &str, f: impl FnOnce() -> F) -> RResult<T, PluginError>
    where
        F: Future<Output = Result<T>>,
    {
        if self.poisoned.load(Ordering::SeqCst) {
            return RResult::RErr(PluginError::new(
                ErrorKind::PANIC,
                format!(
                    "`{entry}` refused: this connector instance panicked earlier and cannot be \
                     used again; start a new run"
                ),
            ));
        }
        let result = catch(entry, || {
            let cancel = self.cancel.clone();
            self.runtime.block_on(async move {
                if cancel.is_cancelled() {
                    return Err(cancelled(entry));
                }
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => Err(cancelled(entry)),
                    r = f() => r,
                }
            })
        });
        if let RResult::RErr(e) = &result {
            if e.kind == ErrorKind::PANIC {
                self.poisoned.store(true, Ordering::SeqCst);
            }
        }
        result
    }

    /// Runs a connector's `close` on this instance's runtime as its object is let go, for at
    /// most [`crate::CLOSE_WAIT`]: skipped when the instance panicked before, a panic in it
    /// contained (and the instance poisoned), its outcome otherwise ignored.
    pub(crate) fn close<F>(&self, f: impl FnOnce() -> F)
    where
        F: Future<Output = ()>,
    {
        if self.poisoned.load(Ordering::SeqCst) {
            return;
        }
        let closed = catch("close", || {
            self.runtime.block_on(async {
                let _ = tokio::time::timeout(crate::CLOSE_WAIT, f()).await;
            });
            Ok(())
        });
        if let RResult::RErr(e) = closed {
            if e.kind == ErrorKind::PANIC {
                self.poisoned.store(true, Ordering::SeqCst);
            }
        }
    }
}

fn cancelled(entry: &str) -> ConnectorError {
    ConnectorError::new(
        ErrorKind::CANCELLED,
        format!("`{entry}` stopped: the host cancelled this connector instance"),
    )
}
