//! Async handles over the ABI's trait objects. Every plugin call runs on a plugin thread.

use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, ROption, RResult, RStr};
use arrow::array::RecordBatch;
use lockstep_plugin_api::{
    BatchReaderBox, CancellerBox, ConnectorModuleRef, DestinationBox, HostContext, HostContextBox,
    HostContext_TO, LogLevel, PluginError, SourceBox, StreamWriterBox,
};
use lockstep_plugin_core::ffi::{export_batch, import_batch, Validation};
use lockstep_protocol::{Catalog, OpenStreamRequest, ReadRequest, WriteOutcome};
use serde_json::Value;
use tracing::level_filters::LevelFilter;

use crate::{HostError, Redactor};

/// What the host offers plugins: log forwarding, under the span that opened the instance.
#[derive(Clone)]
struct HostServices {
    connector: Arc<str>,
    redactor: Redactor,
    span: tracing::Span,
    max_level: LogLevel,
}

impl HostContext for HostServices {
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>, fields: RStr<'_>) {
        let _entered = self.span.enter();
        let message = (self.redactor)(message.as_str());
        let fields = (self.redactor)(fields.as_str());
        let connector = &*self.connector;
        let target = target.as_str();
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(target: "lockstep::plugin", $level, connector, plugin_target = target, fields = %fields, "{message}")
            };
        }
        match level {
            LogLevel::ERROR => emit!(tracing::Level::ERROR),
            LogLevel::WARN => emit!(tracing::Level::WARN),
            LogLevel::INFO => emit!(tracing::Level::INFO),
            LogLevel::DEBUG => emit!(tracing::Level::DEBUG),
            _ => emit!(tracing::Level::TRACE),
        }
    }

    fn max_level(&self) -> LogLevel {
        self.max_level
    }
}

fn host_context(connector: &str, redactor: Redactor) -> HostContextBox {
    let max_level = match LevelFilter::current() {
        LevelFilter::OFF => LogLevel(0),
        LevelFilter::ERROR => LogLevel::ERROR,
        LevelFilter::WARN => LogLevel::WARN,
        LevelFilter::INFO => LogLevel::INFO,
        LevelFilter::DEBUG => LogLevel::DEBUG,
        _ => LogLevel::TRACE,
    };
    HostContext_TO::from_ptr(
        RArc::new(HostServices {
            connector: connector.into(),
            redactor,
            span: tracing::Span::current(),
            max_level,
        }),
        TD_Opaque,
    )
}

/// The identity of one plugin instance, for errors.
#[derive(Clone)]
struct Caller {
    connector: Arc<str>,
    redactor: Redactor,
}

impl Caller {
    fn plugin_error(&self, operation: &'static str, e: PluginError) -> HostError {
        HostError::Plugin {
            connector: self.connector.to_string(),
            operation,
            kind: e.kind,
            message: (self.redactor)(e.message.as_str()),
            details: serde_json::from_str((self.redactor)(e.details.as_str()).as_str()).ok(),
            retry_after_ms: e.retry_after_ms,
        }
    }

    fn lift<T>(&self, operation: &'static str, r: RResult<T, PluginError>) -> Result<T, HostError> {
        r.into_result().map_err(|e| self.plugin_error(operation, e))
    }

    fn call_error(&self, operation: &'static str, reason: impl ToString) -> HostError {
        HostError::Call {
            connector: self.connector.to_string(),
            operation,
            reason: reason.to_string(),
        }
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        text: &str,
    ) -> Result<T, HostError> {
        serde_json::from_str(text).map_err(|e| HostError::InvalidBatch {
            connector: self.connector.to_string(),
            operation,
            reason: format!("its JSON reply does not fit the protocol: {e}"),
        })
    }

    /// Runs `f` on a plugin thread (see [`crate::threads`]) with the object taken out of
    /// `slot` and put back after.
    async fn blocking<T, O>(
        &self,
        operation: &'static str,
        slot: &mut Option<T>,
        f: impl FnOnce(&mut T) -> O + Send + 'static,
    ) -> Result<O, HostError>
    where
        T: Send + 'static,
        O: Send + 'static,
    {
        self.blocking_at(operation, slot, Placement::PluginThread, f)
            .await
    }

    /// [`Caller::blocking`], with the read path's choice of where the call runs.
    async fn blocking_at<T, O>(
        &self,
        operation: &'static str,
        slot: &mut Option<T>,
        placement: Placement,
        f: impl FnOnce(&mut T) -> O + Send + 'static,
    ) -> Result<O, HostError>
    where
        T: Send + 'static,
        O: Send + 'static,
    {
        let mut object = slot.take().ok_or_else(|| {
            self.call_error(
                operation,
                "an earlier call on this instance was abandoned mid-way; open a new one",
            )
        })?;
        // Reads on a multi-threaded runtime run right here, with this worker turned into a
        // blocking thread for the call (`block_in_place` hands its other tasks to another
        // thread): no hand-off, which is most of a call's cost. Other calls go to a plugin
        // thread, so that the task awaiting them stays responsive (the engine renews its
        // lease while a write is in flight). Either way no async task waits behind a call.
        let inline = placement == Placement::InlineIfPossible
            && tokio::runtime::Handle::try_current()
                .map(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
                .unwrap_or(false);
        if inline {
            let out = tokio::task::block_in_place(|| f(&mut object));
            *slot = Some(object);
            return Ok(out);
        }
        let span = tracing::Span::current();
        let (object, out) = crate::threads::run(move || {
            let _entered = span.enter();
            let out = f(&mut object);
            (object, out)
        })
        .await
        .map_err(|e| self.call_error(operation, e))?;
        *slot = Some(object);
        Ok(out)
    }
}

/// Where a plugin call runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// On one of the host's plugin threads.
    PluginThread,
    /// On the calling thread via `block_in_place` when the runtime allows it.
    InlineIfPossible,
}

fn to_json_arg<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("protocol messages always serialize")
}

/// Calls one of the root module's constructors on a plugin thread and returns the instance
/// with the caller identity its handle needs.
async fn construct<T: Send + 'static>(
    operation: &'static str,
    connector: &str,
    config: &Value,
    redactor: Redactor,
    new: impl FnOnce(RStr<'_>, HostContextBox) -> RResult<T, PluginError> + Send + 'static,
) -> Result<(T, Caller), HostError> {
    let caller = Caller {
        connector: connector.into(),
        redactor: redactor.clone(),
    };
    let ctx = host_context(connector, redactor);
    let config = config.to_string();
    let mut slot = Some(());
    let result = caller
        .blocking(operation, &mut slot, move |_| {
            new(RStr::from_str(&config), ctx)
        })
        .await?;
    let inner = caller.lift(operation, result)?;
    Ok((inner, caller))
}

pub(crate) async fn open_source(
    module: ConnectorModuleRef,
    connector: &str,
    config: &Value,
    redactor: Redactor,
) -> Result<SourceHandle, HostError> {
    let (inner, caller) = construct("new_source", connector, config, redactor, move |c, h| {
        (module.new_source())(c, h)
    })
    .await?;
    Ok(SourceHandle {
        canceller: Arc::new(inner.canceller()),
        inner: Some(inner),
        caller,
    })
}

pub(crate) async fn open_destination(
    module: ConnectorModuleRef,
    connector: &str,
    config: &Value,
    redactor: Redactor,
) -> Result<DestinationHandle, HostError> {
    let (inner, caller) = construct(
        "new_destination",
        connector,
        config,
        redactor,
        move |c, h| (module.new_destination())(c, h),
    )
    .await?;
    Ok(DestinationHandle {
        canceller: Arc::new(inner.canceller()),
        inner: Some(inner),
        caller,
    })
}

/// Cancels the calls in flight of one plugin instance; cheap to clone, usable from anywhere.
#[derive(Clone)]
pub struct CancelHandle(Arc<CancellerBox>);

impl CancelHandle {
    pub fn cancel(&self) {
        self.0.cancel();
    }
}

/// The methods every plugin instance handle has: its name, cancellation, `check` and
/// `discover`. (A macro, because the ABI's source and destination trait objects share these
/// methods but no trait.)
macro_rules! instance_methods {
    () => {
        /// The connector's name.
        pub fn connector(&self) -> &str {
            &self.caller.connector
        }

        /// A handle that cancels this instance's calls in flight.
        pub fn cancel_handle(&self) -> CancelHandle {
            CancelHandle(self.canceller.clone())
        }

        /// Checks connectivity and credentials.
        pub async fn check(&mut self) -> Result<(), HostError> {
            let r = self
                .caller
                .clone()
                .blocking("check", &mut self.inner, |i| i.check())
                .await?;
            self.caller.lift("check", r)
        }

        /// The streams this instance offers (a source) or holds (a destination).
        pub async fn discover(&mut self) -> Result<Catalog, HostError> {
            let caller = self.caller.clone();
            let r = caller
                .blocking("discover", &mut self.inner, |i| i.discover())
                .await?;
            let text = caller.lift("discover", r)?;
            caller.json("discover", text.as_str())
        }
    };
}

/// A source plugin instance.
pub struct SourceHandle {
    inner: Option<SourceBox>,
    canceller: Arc<CancellerBox>,
    caller: Caller,
}

impl SourceHandle {
    instance_methods!();

    /// Starts reading a stream.
    pub async fn read(&mut self, request: &ReadRequest) -> Result<BatchStream, HostError> {
        let caller = self.caller.clone();
        let request = to_json_arg(request);
        let r = caller
            .blocking("read", &mut self.inner, move |s| {
                s.read(RStr::from_str(&request))
            })
            .await?;
        let reader = caller.lift("read", r)?;
        Ok(BatchStream {
            inner: Some(reader),
            caller,
            done: false,
            placement: Placement::InlineIfPossible,
        })
    }
}

/// The batches of one read, each validated on arrival.
pub struct BatchStream {
    inner: Option<BatchReaderBox>,
    caller: Caller,
    done: bool,
    /// Where [`BatchStream::next`] runs the plugin's `next_batch`.
    placement: Placement,
}

impl BatchStream {
    /// Runs this read's calls on a plugin thread instead of the calling task's worker.
    ///
    /// A read's `next_batch` runs inline by default (`block_in_place`), which saves a
    /// hand-off a batch but suspends everything else in the calling *task* for the call:
    /// the other branches of a `tokio::join!` or `select!` do not progress until it returns.
    /// A read awaited beside other work in one task (both sides of a sync read at once, a
    /// key-set summary beside a run's changes) uses this so that the work runs side by side.
    pub fn on_plugin_thread(mut self) -> Self {
        self.placement = Placement::PluginThread;
        self
    }

    /// The next batch and its checkpoint, or `None` at the end of the read.
    pub async fn next(&mut self) -> Result<Option<(RecordBatch, Value)>, HostError> {
        if self.done {
            return Ok(None);
        }
        let caller = self.caller.clone();
        let r = caller
            .blocking_at("next_batch", &mut self.inner, self.placement, |r| {
                r.next_batch().map(|batch| match batch {
                    ROption::RNone => Ok(None),
                    ROption::RSome(b) => {
                        let checkpoint = b.checkpoint.to_string();
                        import_batch(b.batch, Validation::Full)
                            .map(|batch| Some((batch, checkpoint)))
                            .map_err(|e| e.to_string())
                    }
                })
            })
            .await?;
        let imported = caller.lift("next_batch", r)?;
        match imported {
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            Ok(Some((batch, checkpoint))) => {
                let checkpoint = caller.json("next_batch", &checkpoint)?;
                Ok(Some((batch, checkpoint)))
            }
            Err(reason) => Err(HostError::InvalidBatch {
                connector: caller.connector.to_string(),
                operation: "next_batch",
                reason,
            }),
        }
    }
}

/// A destination plugin instance.
pub struct DestinationHandle {
    inner: Option<DestinationBox>,
    canceller: Arc<CancellerBox>,
    caller: Caller,
}

impl DestinationHandle {
    instance_methods!();

    /// Prepares a stream for writing.
    pub async fn open_stream(
        &mut self,
        request: &OpenStreamRequest,
    ) -> Result<StreamWriterHandle, HostError> {
        let caller = self.caller.clone();
        let request = to_json_arg(request);
        let r = caller
            .blocking("open_stream", &mut self.inner, move |d| {
                d.open_stream(RStr::from_str(&request))
            })
            .await?;
        let writer = caller.lift("open_stream", r)?;
        Ok(StreamWriterHandle {
            inner: Some(writer),
            caller,
        })
    }
}

/// Writes to one destination stream.
pub struct StreamWriterHandle {
    inner: Option<StreamWriterBox>,
    caller: Caller,
}

impl StreamWriterHandle {
    /// Inserts or updates rows by key.
    pub async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome, HostError> {
        self.write("upsert", batch, |w, b| w.upsert(b)).await
    }

    /// Deletes rows by key; `keys` holds the key columns only.
    pub async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome, HostError> {
        self.write("delete", keys, |w, b| w.delete(b)).await
    }

    async fn write(
        &mut self,
        operation: &'static str,
        batch: RecordBatch,
        call: fn(
            &mut StreamWriterBox,
            lockstep_plugin_api::FfiBatch,
        ) -> RResult<abi_stable::std_types::RString, PluginError>,
    ) -> Result<WriteOutcome, HostError> {
        let caller = self.caller.clone();
        let r = caller
            .blocking(operation, &mut self.inner, move |w| {
                export_batch(batch)
                    .map_err(|e| e.to_string())
                    .map(|exported| call(w, exported))
            })
            .await?;
        let r = r.map_err(|reason| caller.call_error(operation, reason))?;
        let text = caller.lift(operation, r)?;
        caller.json(operation, text.as_str())
    }

    /// Makes every write so far durable.
    pub async fn flush(&mut self) -> Result<(), HostError> {
        let r = self
            .caller
            .clone()
            .blocking("flush", &mut self.inner, |w| w.flush())
            .await?;
        self.caller.lift("flush", r)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use lockstep_plugin_api::{BatchReader, BatchReader_TO, ErrorKind, SourceBatch};

    use super::*;

    /// A reader whose one call waits for a signal from elsewhere in the test, then ends.
    struct WaitsForSignal(mpsc::Receiver<()>);

    impl BatchReader for WaitsForSignal {
        fn next_batch(&mut self) -> RResult<ROption<SourceBatch>, PluginError> {
            match self.0.recv_timeout(Duration::from_secs(5)) {
                Ok(()) => RResult::ROk(ROption::RNone),
                Err(_) => RResult::RErr(PluginError::new(
                    ErrorKind::INTERNAL,
                    "no signal: the task that sends it did not run while this call waited",
                )),
            }
        }
    }

    /// A read on a plugin thread lets the other branches of its task's `join!` run while a
    /// call waits; an inline read would hold the whole task, so the signal its call waits
    /// for would never be sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_on_a_plugin_thread_lets_its_task_go_on() {
        let (signal, wait) = mpsc::channel();
        let mut stream = BatchStream {
            inner: Some(BatchReader_TO::from_value(WaitsForSignal(wait), TD_Opaque)),
            caller: Caller {
                connector: "test".into(),
                redactor: crate::no_redaction(),
            },
            done: false,
            placement: Placement::InlineIfPossible,
        }
        .on_plugin_thread();
        let (read, ()) = tokio::join!(stream.next(), async {
            signal.send(()).expect("the reader waits");
        });
        assert!(read.expect("the read ends").is_none());
    }
}
