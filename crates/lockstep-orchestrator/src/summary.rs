//! Key-set summaries before a reconciliation: when both connectors can summarize a stream's
//! key set in place (the `key-summary` feature) and the match key is made of plain copies of
//! source fields, the source's and the destination's summaries (a count and an
//! order-independent hash of the keys) are compared first. Equal summaries mean equal key
//! sets, so nothing needs deleting and no key is streamed: a no-op mirror run costs two
//! aggregate queries instead of reading every key of both sides.
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

/// Whether the source's and the destination's key sets are known to be equal, by their
/// summaries. `false` means "not known": the caller streams the keys.
pub(crate) async fn key_sets_match(ctx: &Context<'_>) -> bool {
    let job = ctx.job;
    let Some(source_key) = ctx.mapper.key_copies() else {
        return false;
    };
    if !summarizes(ctx.services, &job.source.connector)
        || !summarizes(ctx.services, &job.destination.connector)
    {
        return false;
    }
    let source = summary(
        ctx.services,
        &job.source,
        &job.spec.source.stream,
        source_key,
    );
    let destination = summary(
        ctx.services,
        &job.destination,
        &job.spec.destination.stream,
        ctx.mapper.key().to_vec(),
    );
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
    let mut reader = source.read(&request).await?;
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
