//! `lockstep cdc drop SYNC`: a retired cdc sync's replication slot and publication are
//! dropped by its source plugin (which owns them; the engine never talks to the source system
//! itself), then the sync's checkpoint and ledger are forgotten, so that a sync still
//! configured takes a new snapshot at its next run instead of pointing into a vanished slot.
//!
//! Invariants:
//! - The drop holds the sync's lease from before the plugin is asked until the checkpoint is
//!   reset: no run of the sync reads the slot meanwhile, and a run in progress (here or on
//!   another machine sharing the state store) refuses the drop, naming its holder.
//! - The request goes only to a plugin that declares `cdc-drop` (an older plugin would ignore
//!   the request's `drop` and read, creating the slot).

use lockstep_core::protocol::{CdcDropped, CdcRequest, ReadMode, ReadRequest, FEATURE_CDC_DROP};
use lockstep_core::SyncMode;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::job::{RunOptions, SyncJob};

/// What `Engine::cdc_drop` did.
#[derive(Debug)]
pub struct CdcDropReport {
    /// One outcome per object of the source (the slot, the publication).
    pub objects: Vec<CdcDropped>,
    /// The sync's checkpoint was forgotten: its next run takes a new snapshot.
    pub checkpoint_reset: bool,
}

impl Engine<'_> {
    /// Drops the replication slot and publication of cdc sync `job`, under its lease, then
    /// forgets its checkpoint. `keep_publication` leaves the publication alone (another sync
    /// uses it).
    pub async fn cdc_drop(
        &self,
        job: &SyncJob,
        options: &RunOptions,
        keep_publication: bool,
    ) -> Result<CdcDropReport, EngineError> {
        let spec = &job.spec;
        let cdc = match (&spec.mode, &spec.cdc) {
            (SyncMode::Cdc, Some(cdc)) => cdc,
            _ => {
                return Err(EngineError::Config(format!(
                    "sync `{}` is not a cdc sync (mode = \"cdc\"): it has no replication slot \
                     to drop",
                    spec.name
                )))
            }
        };
        let plugin = self.registry.get(&job.source.connector)?;
        if !plugin
            .manifest
            .features
            .iter()
            .any(|f| f == FEATURE_CDC_DROP)
        {
            return Err(EngineError::Config(format!(
                "connector `{}` {} cannot drop what its cdc reads created (it lacks the feature \
                 `{FEATURE_CDC_DROP}`): upgrade the plugin, or drop replication slot `{}` and \
                 publication `{}` on the source by hand",
                job.source.connector, plugin.manifest.version, cdc.slot, cdc.publication
            )));
        }
        let lease = self.acquire_lease_for(&spec.name, options).await?;
        let result = async {
            let mut source = self.services().open_source(&job.source).await?;
            let request = ReadRequest {
                stream: spec.source.stream.clone(),
                mode: ReadMode::Cdc,
                cdc: Some(CdcRequest {
                    slot: cdc.slot.clone(),
                    publication: cdc.publication.clone(),
                    drop: true,
                    keep_publication,
                }),
                ..Default::default()
            };
            let mut reader = source.read(&request).await?;
            let mut objects = Vec::new();
            while let Some((batch, _)) = reader.next().await? {
                objects.extend(CdcDropped::from_batch(&batch).map_err(|e| {
                    EngineError::Internal(format!(
                        "connector `{}` answered a cdc drop with a batch that is not one: {e}",
                        job.source.connector
                    ))
                })?);
            }
            // The slot is gone: the checkpoint names a position in it no more.
            self.state.reset_sync(&spec.name).await?;
            Ok(CdcDropReport {
                objects,
                checkpoint_reset: true,
            })
        }
        .await;
        if let Err(e) = lease.release().await {
            tracing::warn!(sync = %spec.name, "could not release the lease: {e}");
        }
        result
    }
}
