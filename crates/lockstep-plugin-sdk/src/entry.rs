//! The ABI entry points, generic over the connector, and the adapters from the connector
//! traits to the ABI's trait objects.

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RStr, RString};
use lockstep_plugin_api::{
    self as api, BatchReaderBox, BatchReader_TO, CancellerBox, Canceller_TO, ConnectorModule,
    ConnectorModuleRef, DestinationBox, Destination_TO, FfiBatch, HostContextBox, PluginError,
    SourceBatch, SourceBox, Source_TO, StreamWriterBox, StreamWriter_TO,
};
use serde::de::DeserializeOwned;

use crate::error::ConnectorError;
use crate::guard::{self, CancelState, Instance};
use crate::{
    logging, manifest, BatchReader, Connector, Context, DestinationConnector, SourceConnector,
    StreamWriter,
};
use lockstep_plugin_core::ffi::{export_batch, import_batch, Validation};

/// The root module for connector `C`; called by [`crate::export_connector!`].
pub fn root_module<C: Connector>() -> ConnectorModuleRef {
    ConnectorModule {
        manifest: manifest::<C>,
        new_source: new_source::<C>,
        new_destination: new_destination::<C>,
    }
    .leak_into_prefix()
}

extern "C" fn manifest<C: Connector>() -> RString {
    guard::install_panic_hook();
    let result = guard::catch("manifest", || {
        serde_json::to_string(&manifest::full_manifest::<C>())
            .map_err(|e| ConnectorError::internal(format!("cannot encode the manifest: {e}")))
    });
    match result {
        RResult::ROk(json) => json.into(),
        // The host reports a manifest without a name as a broken plugin, with this message.
        RResult::RErr(e) => serde_json::json!({ "error": e.message.as_str() })
            .to_string()
            .into(),
    }
}

fn parse_config<T: DeserializeOwned>(config: RStr<'_>) -> Result<T, ConnectorError> {
    serde_json::from_str(config.as_str()).map_err(|e| {
        ConnectorError::config(format!(
            "the connection's `config` table is not valid for this connector: {e}; see the \
             connector's config schema with `lockstep connectors inspect`"
        ))
    })
}

fn open_instance<T, F>(
    entry: &str,
    host: HostContextBox,
    open: impl FnOnce(Context) -> F,
) -> RResult<(T, Instance), PluginError>
where
    F: std::future::Future<Output = crate::Result<T>>,
{
    guard::install_panic_hook();
    logging::install(host);
    let instance = match Instance::new() {
        Ok(i) => i,
        Err(e) => return RResult::RErr(e.into()),
    };
    let ctx = Context {
        cancel: instance.cancel.clone(),
    };
    instance
        .call(entry, || open(ctx))
        .map(|value| (value, instance.clone()))
}

extern "C" fn new_source<C: Connector>(
    config: RStr<'_>,
    host: HostContextBox,
) -> RResult<SourceBox, PluginError> {
    let parsed = guard::catch("new_source", || {
        parse_config::<<C::Source as SourceConnector>::Config>(config)
    });
    let parsed = match parsed {
        RResult::ROk(c) => c,
        RResult::RErr(e) => return RResult::RErr(e),
    };
    open_instance("new_source", host, |ctx| C::Source::open(parsed, ctx)).map(
        |(inner, instance)| Source_TO::from_value(SourceAdapter { inner, instance }, TD_Opaque),
    )
}

extern "C" fn new_destination<C: Connector>(
    config: RStr<'_>,
    host: HostContextBox,
) -> RResult<DestinationBox, PluginError> {
    let parsed = guard::catch("new_destination", || {
        parse_config::<<C::Destination as DestinationConnector>::Config>(config)
    });
    let parsed = match parsed {
        RResult::ROk(c) => c,
        RResult::RErr(e) => return RResult::RErr(e),
    };
    open_instance("new_destination", host, |ctx| {
        C::Destination::open(parsed, ctx)
    })
    .map(|(inner, instance)| {
        Destination_TO::from_value(DestinationAdapter { inner, instance }, TD_Opaque)
    })
}

fn parse_request<T: DeserializeOwned>(entry: &str, request: RStr<'_>) -> crate::Result<T> {
    serde_json::from_str(request.as_str()).map_err(|e| {
        ConnectorError::internal(format!("the host sent a malformed `{entry}` request: {e}"))
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> crate::Result<RString> {
    serde_json::to_string(value)
        .map(RString::from)
        .map_err(|e| ConnectorError::internal(format!("cannot encode a reply as JSON: {e}")))
}

struct CancelHandle(std::sync::Arc<CancelState>);

impl api::Canceller for CancelHandle {
    fn cancel(&self) {
        self.0.cancel();
    }
}

fn canceller(instance: &Instance) -> CancellerBox {
    Canceller_TO::from_value(CancelHandle(instance.cancel.clone()), TD_Opaque)
}

struct SourceAdapter<S: SourceConnector> {
    inner: S,
    instance: Instance,
}

impl<S: SourceConnector> Drop for SourceAdapter<S> {
    fn drop(&mut self) {
        let inner = &mut self.inner;
        self.instance.close(|| inner.close());
    }
}

impl<S: SourceConnector> api::Source for SourceAdapter<S> {
    fn check(&mut self) -> RResult<(), PluginError> {
        let inner = &mut self.inner;
        self.instance.call("check", || inner.check())
    }

    fn discover(&mut self) -> RResult<RString, PluginError> {
        let inner = &mut self.inner;
        self.instance
            .call("discover", || async { to_json(&inner.discover().await?) })
    }

    fn read(&mut self, request: RStr<'_>) -> RResult<BatchReaderBox, PluginError> {
        let inner = &mut self.inner;
        let reader = self.instance.call("read", || async {
            inner.read(parse_request("read", request)?).await
        });
        reader.map(|reader| {
            BatchReader_TO::from_value(
                ReaderAdapter {
                    reader,
                    instance: self.instance.clone(),
                },
                TD_Opaque,
            )
        })
    }

    fn canceller(&self) -> CancellerBox {
        canceller(&self.instance)
    }
}

struct ReaderAdapter<R> {
    reader: R,
    instance: Instance,
}

impl<R: BatchReader> api::BatchReader for ReaderAdapter<R> {
    fn next_batch(&mut self) -> RResult<ROption<SourceBatch>, PluginError> {
        let reader = &mut self.reader;
        self.instance.call("next_batch", || async {
            Ok(match reader.next_batch().await? {
                None => ROption::RNone,
                Some((batch, checkpoint)) => ROption::RSome(SourceBatch {
                    batch: export_batch(batch)?,
                    checkpoint: checkpoint.to_string().into(),
                }),
            })
        })
    }
}

struct DestinationAdapter<D: DestinationConnector> {
    inner: D,
    instance: Instance,
}

impl<D: DestinationConnector> Drop for DestinationAdapter<D> {
    fn drop(&mut self) {
        let inner = &mut self.inner;
        self.instance.close(|| inner.close());
    }
}

impl<D: DestinationConnector> api::Destination for DestinationAdapter<D> {
    fn check(&mut self) -> RResult<(), PluginError> {
        let inner = &mut self.inner;
        self.instance.call("check", || inner.check())
    }

    fn discover(&mut self) -> RResult<RString, PluginError> {
        let inner = &mut self.inner;
        self.instance
            .call("discover", || async { to_json(&inner.discover().await?) })
    }

    fn open_stream(&mut self, request: RStr<'_>) -> RResult<StreamWriterBox, PluginError> {
        let inner = &mut self.inner;
        let writer = self.instance.call("open_stream", || async {
            inner
                .open_stream(parse_request("open_stream", request)?)
                .await
        });
        writer.map(|writer| {
            StreamWriter_TO::from_value(
                WriterAdapter {
                    writer,
                    instance: self.instance.clone(),
                },
                TD_Opaque,
            )
        })
    }

    fn canceller(&self) -> CancellerBox {
        canceller(&self.instance)
    }
}

struct WriterAdapter<W: StreamWriter> {
    writer: W,
    instance: Instance,
}

impl<W: StreamWriter> Drop for WriterAdapter<W> {
    fn drop(&mut self) {
        let writer = &mut self.writer;
        self.instance.close(|| writer.close());
    }
}

impl<W: StreamWriter> api::StreamWriter for WriterAdapter<W> {
    fn upsert(&mut self, batch: FfiBatch) -> RResult<RString, PluginError> {
        let writer = &mut self.writer;
        self.instance.call("upsert", || async {
            // The host validated what it exports; it is the one producer we trust.
            let batch = import_batch(batch, Validation::Trusted)?;
            to_json(&writer.upsert(batch).await?)
        })
    }

    fn delete(&mut self, keys: FfiBatch) -> RResult<RString, PluginError> {
        let writer = &mut self.writer;
        self.instance.call("delete", || async {
            let keys = import_batch(keys, Validation::Trusted)?;
            to_json(&writer.delete(keys).await?)
        })
    }

    fn flush(&mut self) -> RResult<(), PluginError> {
        let writer = &mut self.writer;
        self.instance.call("flush", || writer.flush())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{Catalog, ReadRequest, Unsupported};

    /// How many times [`Closing::close`] ran to its end.
    static CLOSED: AtomicUsize = AtomicUsize::new(0);

    /// A source that counts its closes; its `close` awaits, as a connection's would.
    struct Closing;

    impl SourceConnector for Closing {
        type Config = serde_json::Value;
        type Reader = Unsupported;

        async fn open(_: serde_json::Value, _: Context) -> crate::Result<Self> {
            Ok(Closing)
        }

        async fn check(&mut self) -> crate::Result<()> {
            Ok(())
        }

        async fn discover(&mut self) -> crate::Result<Catalog> {
            Err(ConnectorError::internal("not used"))
        }

        async fn read(&mut self, _: ReadRequest) -> crate::Result<Unsupported> {
            Err(ConnectorError::internal("not used"))
        }

        async fn close(&mut self) {
            tokio::task::yield_now().await;
            CLOSED.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Letting an instance go runs its connector's `close` on the instance's runtime, once.
    #[test]
    fn dropping_a_source_closes_it_once() {
        let adapter = SourceAdapter {
            inner: Closing,
            instance: Instance::new().expect("a runtime"),
        };
        assert_eq!(CLOSED.load(Ordering::SeqCst), 0);
        drop(adapter);
        assert_eq!(CLOSED.load(Ordering::SeqCst), 1);
    }
}
