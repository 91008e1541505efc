//! Key-set summaries before a reconciliation: when both connectors can summarize a stream's
//! key set in place (the `key-summary` feature) and the match key is made of plain copies of
//! source fields, the source's and the destination's summaries (a count and an
//! order-independent hash of the keys) are compared first. Equal summaries mean equal key
//! sets, so nothing needs deleting and no key is streamed: a no-op mirror run costs two
//! aggregate queries instead of reading every key of both sides.
//!
//! A run's source summary may be taken early, while the changes are read and written
//! (`source_summary`), and the destination's as soon as they are written, beside what is
//! left of the source's (`destination_summary`): the source's then describes its key set at
//! the run's start. A key the source gained during the run makes the
//! summaries differ (the keys are streamed: slower, still correct); a key it lost during the
//! run stays in the destination until the next reconciliation, as a key lost just after the
//! run would. No delete is ever missed for good, and none is made wrongly.
//!
//! Invariants:
//! - Equal summaries are trusted only when they come from the same algorithm; anything else
//!   (another algorithm, a computed key, a connector without the feature, a failed summary)
//!   falls back to streaming the keys, which is always correct.
//! - Summaries only ever skip work: they never delete anything themselves.

use lockstep_core::protocol::{KeySummary, ReadMode, ReadRequest, FEATURE_KEY_SUMMARY};

use crate::context::Context;
use crate::error::EngineError;
use crate::job::Endpoint;
use crate::services::Services;

/// A key-set summary the run took before the reconciliation (`source_summary`,
/// `destination_summary`); `None` inside when the summaries cannot decide for this sync (a
/// computed key, a connector without the feature).
pub(crate) struct TakenSummary(Option<Result<KeySummary, EngineError>>);

/// The source's key-set summary, taken while the run reads and writes its changes.
pub(crate) async fn source_summary(ctx: &Context<'_>) -> TakenSummary {
    let Some(source_key) = summarizable(ctx) else {
        return TakenSummary(None);
    };
    TakenSummary(Some(of_source(ctx, source_key).await))
}

/// The destination's key-set summary, taken once the run's changes are flushed (so it
/// counts them) and while the source's may still run.
pub(crate) async fn destination_summary(ctx: &Context<'_>) -> TakenSummary {
    if summarizable(ctx).is_none() {
        return TakenSummary(None);
    }
    TakenSummary(Some(of_destination(ctx).await))
}

/// The summary of the source's key set, by its key fields `source_key`.
async fn of_source(ctx: &Context<'_>, source_key: Vec<String>) -> Result<KeySummary, EngineError> {
    let job = ctx.job;
    summary(
        ctx.services,
        &job.source,
        &job.spec.source.stream,
        source_key,
    )
    .await
}

/// The summary of the destination's key set, by the mapped key.
async fn of_destination(ctx: &Context<'_>) -> Result<KeySummary, EngineError> {
    let job = ctx.job;
    summary(
        ctx.services,
        &job.destination,
        &job.spec.destination.stream,
        ctx.mapper.key().to_vec(),
    )
    .await
}

/// The source's key fields, when both connectors summarize and the key is plain copies.
fn summarizable(ctx: &Context<'_>) -> Option<Vec<String>> {
    let job = ctx.job;
    let source_key = ctx.mapper.key_copies()?;
    (summarizes(ctx.services, &job.source.connector)
        && summarizes(ctx.services, &job.destination.connector))
    .then_some(source_key)
}

/// Whether the source's and the destination's key sets are known to be equal, by their
/// summaries. `false` means "not known": the caller streams the keys. Each side's summary is
/// the one the run took (`early` the source's while it wrote its changes, `written` the
/// destination's once they were flushed), else taken now beside the other.
pub(crate) async fn key_sets_match(
    ctx: &Context<'_>,
    early: Option<TakenSummary>,
    written: Option<TakenSummary>,
) -> bool {
    let Some(source_key) = summarizable(ctx) else {
        return false;
    };
    let source = async {
        match early {
            Some(TakenSummary(Some(taken))) => taken,
            Some(TakenSummary(None)) | None => of_source(ctx, source_key).await,
        }
    };
    let destination = async {
        match written {
            Some(TakenSummary(Some(taken))) => taken,
            Some(TakenSummary(None)) | None => of_destination(ctx).await,
        }
    };
    match tokio::join!(source, destination) {
        (Ok(source), Ok(destination)) => {
            let equal = source.algorithm == destination.algorithm
                && source.count == destination.count
                && source.hash == destination.hash;
            tracing::debug!(
                ?source,
                ?destination,
                equal,
                "key-set summaries before reconciliation"
            );
            equal
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(
                error = %e,
                "could not summarize the key sets; comparing them key by key instead"
            );
            false
        }
    }
}

/// Whether connector `name` declares the `key-summary` feature.
pub(crate) fn summarizes(services: Services<'_>, name: &str) -> bool {
    services
        .registry
        .get(name)
        .map(|p| p.manifest.features.iter().any(|f| f == FEATURE_KEY_SUMMARY))
        .unwrap_or(false)
}

/// The summary of the key set `key` of `stream`, read through a source instance of
/// `endpoint`'s connector.
pub(crate) async fn summary(
    services: Services<'_>,
    endpoint: &Endpoint,
    stream: &str,
    key: Vec<String>,
) -> Result<KeySummary, EngineError> {
    let connector = &endpoint.connector;
    let mut source = services.open_source(endpoint).await?;
    let request = ReadRequest {
        stream: stream.to_owned(),
        mode: ReadMode::Full,
        fields: Some(key.clone()),
        key,
        key_summary: true,
        ..Default::default()
    };
    // A summary always runs beside other work of its task (the run's changes, the other
    // side's summary).
    let mut reader = source.read(&request).await?.on_plugin_thread();
    let Some((batch, _)) = reader.next().await? else {
        return Err(EngineError::Internal(format!(
            "connector `{connector}` answered a key-summary read of `{stream}` with no batch"
        )));
    };
    KeySummary::from_batch(&batch).map_err(|e| {
        EngineError::Internal(format!(
            "connector `{connector}` answered a key-summary read of `{stream}` with a bad \
             batch: {e}"
        ))
    })
}
