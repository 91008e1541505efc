//! The services a run needs from outside the engine — the plugin registry, the state store
//! and the redactor — in one struct that the run's modules take instead of the engine, and
//! the ways a run opens plugin instances through them.
//!
//! Invariants:
//! - This module knows nothing of how a run proceeds: it depends on the job's description
//!   and the error type only, so every step of a run can use it without a circle of imports.
//! - Every plugin instance is opened with the run's redactor, so secrets never reach a log
//!   line a plugin writes.

use lockstep_core::protocol::{OpenStreamRequest, SchemaEvolution, StreamInfo};
use lockstep_mapping::Mapper;
use lockstep_plugin_host::{
    DestinationHandle, PluginRegistry, Redactor, SourceHandle, StreamWriterHandle,
};
use lockstep_state::StateStore;

use crate::error::EngineError;
use crate::job::{Endpoint, SyncJob};

/// What a run uses from outside: plugins, the state store, and the redactor for both.
#[derive(Clone, Copy)]
pub(crate) struct Services<'a> {
    pub(crate) registry: &'a PluginRegistry,
    pub(crate) state: &'a dyn StateStore,
    pub(crate) redactor: &'a Redactor,
}

impl Services<'_> {
    /// Opens a source instance of `endpoint`'s connector (the destination's too, to read it).
    pub(crate) async fn open_source(
        &self,
        endpoint: &Endpoint,
    ) -> Result<SourceHandle, EngineError> {
        let plugin = self.registry.get(&endpoint.connector)?;
        Ok(plugin
            .open_source(&endpoint.config, self.redactor.clone())
            .await?)
    }

    /// Opens a destination instance of `endpoint`'s connector.
    pub(crate) async fn open_destination(
        &self,
        endpoint: &Endpoint,
    ) -> Result<DestinationHandle, EngineError> {
        let plugin = self.registry.get(&endpoint.connector)?;
        Ok(plugin
            .open_destination(&endpoint.config, self.redactor.clone())
            .await?)
    }

    /// Opens a source instance and finds the sync's stream in its catalog.
    pub(crate) async fn open_source_stream(
        &self,
        job: &SyncJob,
    ) -> Result<(SourceHandle, StreamInfo), EngineError> {
        let spec = &job.spec;
        let mut source = self.open_source(&job.source).await?;
        let catalog = source.discover().await?;
        let stream = catalog
            .stream(&spec.source.stream)
            .cloned()
            .ok_or_else(|| {
                EngineError::Schema(format!(
                    "connection `{}` has no stream `{}`; it has: {}",
                    spec.source.connection,
                    spec.source.stream,
                    catalog
                        .streams
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        Ok((source, stream))
    }
}

/// Opens the sync's destination stream, created from the mapped schema when missing and
/// given the columns the mapping added since.
pub(crate) async fn open_destination_stream(
    destination: &mut DestinationHandle,
    job: &SyncJob,
    mapper: &Mapper,
) -> Result<StreamWriterHandle, EngineError> {
    Ok(destination
        .open_stream(&OpenStreamRequest {
            stream: job.spec.destination.stream.clone(),
            fields: mapper.target_fields(),
            key: mapper.key().to_vec(),
            create_if_missing: true,
            schema_evolution: SchemaEvolution::AddColumns,
        })
        .await?)
}
