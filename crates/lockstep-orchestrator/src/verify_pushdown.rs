//! `lockstep verify`'s pushdown: the two systems hash their own records by ranges of the key
//! space (the connector feature `range-hash`), and only the records of ranges that differ
//! travel, as (key, row hash) pairs; whole records travel only for the keys whose pairs
//! differ, and those go through the engine's own comparison (`compare`), so the report is
//! the one reading both sides in full would give.
//!
//! How it narrows (see docs/verify.md): each side summarizes [`FIRST_RANGES`] ranges of its
//! key space (per range a count and an order-independent hash). All equal: the systems
//! agree, and nothing else is read. When the differing ranges hold more than [`LIST_LIMIT`]
//! records, both sides summarize finer ranges (about [`ROWS_PER_RANGE`] records each); then
//! the ranges whose (count, hash) differ are listed on both sides as (key, row hash) pairs;
//! the keys whose pairs differ are the candidates, fetched by key on both sides. A record's
//! range is the hash of its key's canonical text, not a slice of the key order, so two
//! systems that collate keys differently cut alike, and neither side needs an index on the
//! key (each level is one scan).
//!
//! Invariants:
//! - Used only where both sides provably compute the same thing for the same mapped records
//!   ([`plan`]): the same connector on both sides, with `range-hash` and `read-by-keys`; every
//!   mapped field a plain copy (a rename at most: no expression, cast or path); and each
//!   field of the same logical and native type on both sides. Anything else is declined with
//!   the reason, and verify reads both sides instead.
//! - A false match needs a 64-bit hash collision between different canonical texts; a
//!   candidate that is no difference (values alike once mapped) is dropped by the engine's
//!   comparison of the fetched records, so the pushdown can only cost reads, never change the
//!   report.
//! - Memory never holds a side's summaries: both sides send theirs in range order, in
//!   batches, and [`merge`] walks the two streams range by range, keeping the counts, the
//!   newest values and the list of differing ranges (only while they hold at most
//!   [`LIST_LIMIT`] records). The listed pairs of differing ranges are at most
//!   [`LIST_LIMIT`] records a side, kept compactly ([`Listing`]: the key texts in one buffer,
//!   a 64-bit digest a row hash); past that it declines.

use std::collections::VecDeque;

use lockstep_core::protocol::{
    RangeEntry, RangeHashRequest, RangeSummary, ReadMode, ReadRequest, StreamInfo,
    FEATURE_RANGE_HASH, FEATURE_READ_BY_KEYS, RANGE_HASH_MAX_RANGES,
};
use lockstep_mapping::Mapper;
use lockstep_plugin_host::{BatchStream, SourceHandle};
use serde::Serialize;
use serde_json::Value;

use crate::error::EngineError;
use crate::job::SyncJob;
use crate::services::Services;

/// The ranges of the first level: 16,384, about 61 records each at a million records. More
/// ranges list fewer records when something differs, but each side's grouping then works
/// over a larger hash table: at a million records, 65,536 ranges cost PostgreSQL about 0.3 s
/// more a side than 16,384, while 0.2% of the records differing, scattered, still list only
/// about 12% of them (docs/benchmarks.md, `bench verify`).
pub(crate) const FIRST_RANGES: u64 = 1 << 14;
/// About how many records one range holds at the finer level, when there is one: a
/// differing range lists about this many pairs on each side.
pub(crate) const ROWS_PER_RANGE: u64 = 16;
/// The most records the ranges that differ may hold (on the larger side) for verify to list
/// them; past it, so much differs that reading both sides costs no more.
pub(crate) const LIST_LIMIT: u64 = 200_000;
/// The most ranges one listing read names.
const RANGES_PER_LIST: usize = 50_000;

/// How the content was compared, in the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ContentComparison {
    /// `range-hash` (hashed in both systems, see docs/verify.md) or `read` (both sides read
    /// in full and compared in the engine).
    pub method: &'static str,
    /// Why the range-hash pushdown was not used, when it was not.
    pub declined: Option<String>,
    /// The ranges of the finest level summarized.
    pub ranges: u64,
    /// The ranges whose (count, hash) differed at that level.
    pub differing_ranges: u64,
    /// The (key, row hash) pairs listed, both sides together.
    pub listed: u64,
    /// The keys whose pairs differed, fetched whole on both sides.
    pub candidates: u64,
}

/// The fields the pushdown hashes on each side, in the mapping's order.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub source_fields: Vec<String>,
    pub destination_fields: Vec<String>,
    pub source_key: Vec<String>,
    pub destination_key: Vec<String>,
    pub source_newest: Option<String>,
    pub destination_newest: Option<String>,
}

/// What the pushdown found.
pub(crate) struct Outcome {
    pub source_count: u64,
    pub destination_count: u64,
    /// The newest cursor values' canonical text on each side.
    pub source_newest: Option<String>,
    pub destination_newest: Option<String>,
    /// The keys (canonical text of each key field) whose records differ or are on one side.
    pub candidates: Vec<KeyText>,
    pub stats: ContentComparison,
}

/// The pushdown's answer: what it found, or why it stepped back.
pub(crate) enum Compared {
    Done(Outcome),
    Declined(String),
}

fn has_feature(services: Services<'_>, connector: &str, feature: &str) -> bool {
    services
        .registry
        .get(connector)
        .map(|p| p.manifest.features.iter().any(|f| f == feature))
        .unwrap_or(false)
}

/// Whether the two sides' connectors can hash alike: the same connector, with the features
/// `range-hash` and `read-by-keys`; the reason when not. Checked before anything is opened.
pub(crate) fn check_connectors(services: Services<'_>, job: &SyncJob) -> Result<(), String> {
    let (a, b) = (&job.source.connector, &job.destination.connector);
    if a != b {
        return Err(format!(
            "the two sides use different connectors (`{a}`, `{b}`), whose canonical texts are \
             not proven alike"
        ));
    }
    for feature in [FEATURE_RANGE_HASH, FEATURE_READ_BY_KEYS] {
        if !has_feature(services, a, feature) {
            return Err(format!("connector `{a}` has no `{feature}` feature"));
        }
    }
    Ok(())
}

/// Whether verify may push the comparison of `job` down, and what each side hashes; the
/// reason when it may not.
pub(crate) fn plan(
    services: Services<'_>,
    job: &SyncJob,
    mapper: &Mapper,
    source: &StreamInfo,
    destination: Option<&StreamInfo>,
    cursor_target: Option<&str>,
) -> Result<Plan, String> {
    check_connectors(services, job)?;
    let spec = &job.spec;
    let Some(destination) = destination else {
        return Err(format!(
            "the destination stream `{}` does not exist",
            spec.destination.stream
        ));
    };
    // Each mapped field, with the source field it copies.
    let copies: Vec<(String, String)> = if spec.fields.is_empty() {
        source
            .fields
            .iter()
            .map(|f| (f.name.clone(), f.name.clone()))
            .collect()
    } else {
        let mut copies = Vec::with_capacity(spec.fields.len());
        for m in &spec.fields {
            let transformed = || {
                format!(
                    "field `{}` is computed (`{}`), not a plain copy",
                    m.target, m.source
                )
            };
            if !m.is_copy() {
                return Err(transformed());
            }
            let target = m.target_path().map_err(|_| transformed())?;
            let Ok(lockstep_core::spec::Expr::Field(path)) = m.value() else {
                return Err(transformed());
            };
            if target.len() != 1 || path.len() != 1 {
                return Err(format!(
                    "field `{}` is a path into a JSON field (`{}`), not a plain copy",
                    m.target, m.source
                ));
            }
            copies.push((target[0].clone(), path[0].clone()));
        }
        copies
    };
    let mapped: Vec<String> = mapper
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let names: Vec<&String> = copies.iter().map(|(t, _)| t).collect();
    if mapped.iter().collect::<Vec<_>>() != names {
        return Err("the mapping's fields are not one plain copy each".to_owned());
    }
    for (target, from) in &copies {
        let s = source
            .field(from)
            .ok_or_else(|| format!("source field `{from}` is not a field of the source"))?;
        let d = destination
            .field(target)
            .ok_or_else(|| format!("the destination has no field `{target}` (a run adds it)"))?;
        if s.data_type != d.data_type || s.native_type != d.native_type {
            return Err(format!(
                "field `{target}` is {} ({}) in the source and {} ({}) in the destination",
                s.data_type.describe(),
                s.native_type.as_deref().unwrap_or("?"),
                d.data_type.describe(),
                d.native_type.as_deref().unwrap_or("?"),
            ));
        }
    }
    match mapper.key_copies() {
        Some(k) if k == mapper.source_key() => {}
        _ => return Err("the match key is not a plain copy of source fields".to_owned()),
    }
    Ok(Plan {
        source_fields: copies.iter().map(|(_, s)| s.clone()).collect(),
        destination_fields: copies.iter().map(|(t, _)| t.clone()).collect(),
        source_key: mapper.source_key().to_vec(),
        destination_key: mapper.key().to_vec(),
        source_newest: spec.cursor_field.clone(),
        destination_newest: spec
            .cursor_field
            .as_ref()
            .and(cursor_target.map(str::to_owned)),
    })
}

/// One side of the pushdown: its handle, stream, key, fields and newest field.
struct Side<'a> {
    handle: &'a mut SourceHandle,
    stream: &'a str,
    key: &'a [String],
    fields: &'a [String],
    /// The fields the row hash takes after the key: `fields` but those that copy a key
    /// field into a key field (the key is hashed once), dropped on both sides alike.
    hashed: Vec<String>,
    newest: Option<&'a str>,
    name: &'static str,
}

impl Side<'_> {
    fn request(&self, hash: RangeHashRequest) -> ReadRequest {
        ReadRequest {
            stream: self.stream.to_owned(),
            mode: ReadMode::Full,
            fields: Some(self.fields.to_vec()),
            key: self.key.to_vec(),
            dry_run: true,
            range_hash: Some(hash),
            ..Default::default()
        }
    }

    /// The summaries of `ranges` ranges, as a stream in range order.
    async fn summaries(&mut self, ranges: u64) -> Result<Summaries, EngineError> {
        let request = self.request(RangeHashRequest {
            fields: self.hashed.clone(),
            ranges,
            list: None,
            newest: self.newest.map(str::to_owned),
        });
        Ok(Summaries {
            // Both sides' summaries are merged as they arrive, in one task.
            reader: Some(self.handle.read(&request).await?.on_plugin_thread()),
            pending: VecDeque::new(),
            last: None,
            name: self.name,
        })
    }

    /// The (key, row hash) pairs of the records of `list` among `ranges` ranges.
    async fn entries(&mut self, ranges: u64, list: &[u64]) -> Result<Listing, EngineError> {
        let mut out = Listing::default();
        for chunk in list.chunks(RANGES_PER_LIST) {
            let request = self.request(RangeHashRequest {
                fields: self.hashed.clone(),
                ranges,
                list: Some(chunk.to_vec()),
                newest: None,
            });
            // Both sides list at once, in one task (`tokio::join!`).
            let mut reader = self.handle.read(&request).await?.on_plugin_thread();
            while let Some((batch, _)) = reader.next().await? {
                let entries = RangeEntry::from_batch(&batch, self.key.len()).map_err(|e| {
                    EngineError::Schema(format!(
                        "the {} answered a range-hash listing with a malformed batch: {e}",
                        self.name
                    ))
                })?;
                for entry in &entries {
                    out.push(entry);
                }
            }
        }
        Ok(out)
    }
}

/// One side's summaries as they arrive, in batches, checked to come in range order.
struct Summaries {
    /// The read; `None` when the summaries are all in `pending` already.
    reader: Option<BatchStream>,
    pending: VecDeque<RangeSummary>,
    last: Option<u64>,
    name: &'static str,
}

impl Summaries {
    /// The next summary, or `None` at the end; an error (the reason to decline) when the
    /// side answers out of range order.
    async fn next(&mut self) -> Result<Result<Option<RangeSummary>, String>, EngineError> {
        while self.pending.is_empty() {
            let Some(reader) = self.reader.as_mut() else {
                return Ok(Ok(None));
            };
            let Some((batch, _)) = reader.next().await? else {
                return Ok(Ok(None));
            };
            self.pending
                .extend(RangeSummary::from_batch(&batch).map_err(|e| {
                    EngineError::Schema(format!(
                        "the {} answered a range-hash read with a malformed batch: {e}",
                        self.name
                    ))
                })?);
        }
        let next = self.pending.pop_front();
        if let Some(s) = &next {
            if self.last.is_some_and(|last| s.range <= last) {
                return Ok(Err(format!(
                    "the {}'s range summaries do not come in range order",
                    self.name
                )));
            }
            self.last = Some(s.range);
        }
        Ok(Ok(next))
    }
}

/// What merging two sides' summaries found.
#[derive(Debug, Default, PartialEq)]
struct Merged {
    source_count: u64,
    destination_count: u64,
    source_newest: Option<String>,
    destination_newest: Option<String>,
    /// The ranges whose (count, hash) differ, while they hold at most [`LIST_LIMIT`] records;
    /// past that only their number is kept.
    differing: Vec<u64>,
    differing_ranges: u64,
    /// The records the differing ranges hold, on the larger side of each.
    records: u64,
}

/// Merges the two sides' summaries range by range (both come in range order), holding one
/// summary a side at a time: the counts, the newest values, and the ranges that differ.
/// `Err` is a reason to decline (summaries out of order, or of two algorithms).
async fn merge(
    a: &mut Summaries,
    b: &mut Summaries,
) -> Result<Result<Merged, String>, EngineError> {
    let mut merged = Merged::default();
    let mut algorithm: Option<String> = None;
    let mut x = match a.next().await? {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let mut y = match b.next().await? {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    merged.source_newest = x.as_ref().and_then(|s| s.newest.clone());
    merged.destination_newest = y.as_ref().and_then(|s| s.newest.clone());
    loop {
        for s in [&x, &y].into_iter().flatten() {
            match &algorithm {
                Some(a) if *a != s.algorithm => {
                    return Ok(Err(format!(
                        "the two sides hash with different algorithms (`{a}`, `{}`)",
                        s.algorithm
                    )))
                }
                Some(_) => {}
                None => algorithm = Some(s.algorithm.clone()),
            }
        }
        // The lower range of the two, with what each side has of it.
        let range = match (&x, &y) {
            (None, None) => break,
            (Some(s), None) | (None, Some(s)) => s.range,
            (Some(s), Some(t)) => s.range.min(t.range),
        };
        let here = |s: &Option<RangeSummary>| s.as_ref().filter(|s| s.range == range).cloned();
        let (p, q) = (here(&x), here(&y));
        let count = |s: &Option<RangeSummary>| s.as_ref().map_or(0, |s| s.count);
        merged.source_count += count(&p);
        merged.destination_count += count(&q);
        let same = match (&p, &q) {
            (Some(p), Some(q)) => p.count == q.count && p.hash == q.hash,
            _ => false,
        };
        if !same {
            merged.differing_ranges += 1;
            merged.records += count(&p).max(count(&q));
            if merged.records <= LIST_LIMIT {
                merged.differing.push(range);
            }
        }
        if p.is_some() {
            x = match a.next().await? {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
        }
        if q.is_some() {
            y = match b.next().await? {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
        }
    }
    if merged.records > LIST_LIMIT {
        merged.differing = Vec::new();
    }
    Ok(Ok(merged))
}

/// A key as listed: the canonical text of each key field, `None` for a null.
pub(crate) type KeyText = Vec<Option<String>>;

/// One side's listed (key, row hash) pairs, kept compactly: every key's canonical text
/// encoded into one buffer, and a pair as its key's slice of the buffer and a 64-bit digest
/// of its row hash. At the most records a listing may hold ([`LIST_LIMIT`]) this is a few
/// megabytes, where a map of keys to hash texts took tens.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// The keys, one after another: per field a tag (0 for a null, 1 for a value), then for
    /// a value its length (4 bytes, little-endian) and its UTF-8 bytes.
    keys: Vec<u8>,
    /// Per pair: where its key starts in `keys`, the key's encoded length, the row hash's
    /// digest.
    pairs: Vec<(usize, u32, u64)>,
}

impl Listing {
    /// Adds the pair `entry`.
    pub(crate) fn push(&mut self, entry: &RangeEntry) {
        let start = self.keys.len();
        for field in &entry.key {
            match field {
                None => self.keys.push(0),
                Some(text) => {
                    self.keys.push(1);
                    // A listed key field is far below 4 GiB.
                    self.keys
                        .extend_from_slice(&(text.len() as u32).to_le_bytes());
                    self.keys.extend_from_slice(text.as_bytes());
                }
            }
        }
        let len = (self.keys.len() - start) as u32;
        self.pairs.push((start, len, hash_digest(&entry.hash)));
    }

    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn key(&self, pair: &(usize, u32, u64)) -> &[u8] {
        &self.keys[pair.0..pair.0 + pair.1 as usize]
    }

    /// Sorts the pairs by key bytes, then by digest.
    fn sort(&mut self) {
        let keys = &self.keys;
        let key = |p: &(usize, u32, u64)| &keys[p.0..p.0 + p.1 as usize];
        self.pairs
            .sort_unstable_by(|x, y| key(x).cmp(key(y)).then(x.2.cmp(&y.2)));
    }
}

/// A row hash's 64 bits: the value itself when its text is an integer's canonical decimal
/// text (PostgreSQL's are; each such text is one integer's, so two texts get one digest only
/// if they are the same), else a 64-bit hash of the text.
fn hash_digest(hash: &str) -> u64 {
    let digits = hash.strip_prefix('-').unwrap_or(hash);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && if digits.starts_with('0') {
            hash == "0"
        } else {
            true
        };
    match hash.parse::<i64>() {
        Ok(n) if canonical => n as u64,
        _ => {
            use std::hash::BuildHasher;
            foldhash::quality::FixedState::with_seed(0x6c6f_636b).hash_one(hash)
        }
    }
}

/// Decodes a key encoded by [`Listing::push`].
fn decode_key(mut bytes: &[u8]) -> KeyText {
    let mut out = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        if tag == 0 {
            out.push(None);
            bytes = rest;
            continue;
        }
        let (len, rest) = rest.split_at(4);
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (text, rest) = rest.split_at(len);
        // The bytes were a `String`'s.
        out.push(Some(String::from_utf8_lossy(text).into_owned()));
        bytes = rest;
    }
    out
}

/// The keys whose (key, row hash) pairs differ between the two listings (a key on one side
/// only, with another hash, or held another number of times), sorted.
pub(crate) fn candidates(a: &mut Listing, b: &mut Listing) -> Vec<KeyText> {
    a.sort();
    b.sort();
    let (a, b) = (&*a, &*b);
    let (x, y) = (&a.pairs, &b.pairs);
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    // The end of the run of pairs from `start` that share its key.
    let run = |side: &Listing, pairs: &[(usize, u32, u64)], start: usize| {
        let key = side.key(&pairs[start]);
        let mut end = start + 1;
        while end < pairs.len() && side.key(&pairs[end]) == key {
            end += 1;
        }
        end
    };
    while i < x.len() || j < y.len() {
        let order = match (x.get(i), y.get(j)) {
            (Some(p), Some(q)) => a.key(p).cmp(b.key(q)),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.push(decode_key(a.key(&x[i])));
                i = run(a, x, i);
            }
            std::cmp::Ordering::Greater => {
                out.push(decode_key(b.key(&y[j])));
                j = run(b, y, j);
            }
            std::cmp::Ordering::Equal => {
                let (i_end, j_end) = (run(a, x, i), run(b, y, j));
                let (p, q) = (&x[i..i_end], &y[j..j_end]);
                if !p.iter().map(|p| p.2).eq(q.iter().map(|q| q.2)) {
                    out.push(decode_key(a.key(&x[i])));
                }
                (i, j) = (i_end, j_end);
            }
        }
    }
    out.sort();
    out
}

/// The fields each side's row hash takes after the key: the plan's mapped pairs, but a pair
/// that copies one of the source's key fields into one of the destination's, which the row
/// hash already took with the key. Pairs are kept or dropped together, so the two sides hash
/// corresponding columns in the same order.
fn hashed_fields(plan: &Plan) -> (Vec<String>, Vec<String>) {
    plan.source_fields
        .iter()
        .zip(&plan.destination_fields)
        .filter(|(s, d)| !(plan.source_key.contains(s) && plan.destination_key.contains(d)))
        .map(|(s, d)| (s.clone(), d.clone()))
        .unzip()
}

/// Compares the two sides in place, narrowing by ranges down to the candidate keys.
pub(crate) async fn compare(
    source: &mut SourceHandle,
    destination: &mut SourceHandle,
    job: &SyncJob,
    plan: &Plan,
) -> Result<Compared, EngineError> {
    let spec = &job.spec;
    let (hashed_a, hashed_b) = hashed_fields(plan);
    let mut a = Side {
        handle: source,
        stream: &spec.source.stream,
        key: &plan.source_key,
        fields: &plan.source_fields,
        hashed: hashed_a,
        newest: plan.source_newest.as_deref(),
        name: "source",
    };
    let mut b = Side {
        handle: destination,
        stream: &spec.destination.stream,
        key: &plan.destination_key,
        fields: &plan.destination_fields,
        hashed: hashed_b,
        newest: plan.destination_newest.as_deref(),
        name: "destination",
    };

    // A first level of FIRST_RANGES ranges: identical tables stop here, after one scan a side.
    // Both reads are started before either is consumed, so the two systems hash at once.
    let mut ranges = FIRST_RANGES;
    let (mut x, mut y) = (a.summaries(ranges).await?, b.summaries(ranges).await?);
    let merged = match merge(&mut x, &mut y).await? {
        Ok(m) => m,
        Err(e) => return Ok(Compared::Declined(e)),
    };
    drop((x, y));
    let mut outcome = Outcome {
        source_count: merged.source_count,
        destination_count: merged.destination_count,
        source_newest: merged.source_newest,
        destination_newest: merged.destination_newest,
        candidates: Vec::new(),
        stats: ContentComparison {
            method: "range-hash",
            ranges,
            ..Default::default()
        },
    };
    let (mut list, mut records, mut differing_ranges) =
        (merged.differing, merged.records, merged.differing_ranges);
    if differing_ranges == 0 {
        return Ok(Compared::Done(outcome));
    }

    // Finer ranges of about ROWS_PER_RANGE records, when the differing ones hold too many
    // records to list and finer ranges exist.
    let largest = outcome.source_count.max(outcome.destination_count);
    let finer = (largest / ROWS_PER_RANGE)
        .max(1)
        .next_power_of_two()
        .min(RANGE_HASH_MAX_RANGES);
    if records > LIST_LIMIT && finer > ranges {
        ranges = finer;
        let (mut x, mut y) = (a.summaries(ranges).await?, b.summaries(ranges).await?);
        let merged = match merge(&mut x, &mut y).await? {
            Ok(m) => m,
            Err(e) => return Ok(Compared::Declined(e)),
        };
        (list, records, differing_ranges) =
            (merged.differing, merged.records, merged.differing_ranges);
    }
    outcome.stats.ranges = ranges;
    outcome.stats.differing_ranges = differing_ranges;
    if records > LIST_LIMIT {
        return Ok(Compared::Declined(format!(
            "the {differing_ranges} ranges that differ hold {records} records, more than \
             verify lists ({LIST_LIMIT}); so much differs that reading both sides costs no more"
        )));
    }

    // The pairs of the differing ranges.
    let (x, y) = tokio::join!(a.entries(ranges, &list), b.entries(ranges, &list));
    let (mut x, mut y) = (x?, y?);
    outcome.stats.listed = (x.len() + y.len()) as u64;
    outcome.candidates = candidates(&mut x, &mut y);
    outcome.stats.candidates = outcome.candidates.len() as u64;
    Ok(Compared::Done(outcome))
}

/// The candidate keys as the JSON keys of a read by keys (each value its canonical text,
/// which the connector casts back to the key field's type).
pub(crate) fn json_keys(candidates: &[KeyText]) -> Vec<Vec<Value>> {
    candidates
        .iter()
        .map(|k| {
            k.iter()
                .map(|v| v.clone().map_or(Value::Null, Value::String))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, hash: &str) -> RangeEntry {
        RangeEntry {
            key: vec![Some(key.to_owned())],
            hash: hash.to_owned(),
        }
    }

    #[test]
    fn candidates_are_the_keys_whose_pairs_differ() {
        let a = vec![
            entry("1", "a"),
            entry("2", "b"),
            entry("3", "c"),
            entry("5", "e"),
        ];
        let b = vec![
            entry("5", "e"),
            entry("2", "B"),
            entry("3", "c"),
            entry("3", "c"),
            entry("4", "d"),
            entry("1", "a"),
        ];
        let listing = |entries: Vec<RangeEntry>| {
            let mut l = Listing::default();
            for e in &entries {
                l.push(e);
            }
            l
        };
        let keys: Vec<String> = candidates(&mut listing(a), &mut listing(b))
            .into_iter()
            .map(|k| k[0].clone().unwrap())
            .collect();
        assert_eq!(keys, ["2", "3", "4"]);
    }

    #[test]
    fn candidates_tell_a_null_key_field_from_an_empty_one_and_decode_composite_keys() {
        let key = |k: &[Option<&str>], hash: &str| RangeEntry {
            key: k.iter().map(|f| f.map(str::to_owned)).collect(),
            hash: hash.to_owned(),
        };
        let mut a = Listing::default();
        let mut b = Listing::default();
        for e in [
            key(&[None, Some("x")], "1"),
            key(&[Some("é"), Some("")], "-5"),
            key(&[Some("k"), Some("v")], "7"),
        ] {
            a.push(&e);
        }
        for e in [
            key(&[Some(""), Some("x")], "1"),
            key(&[Some("é"), Some("")], "-5"),
            key(&[Some("k"), Some("v")], "not a number"),
        ] {
            b.push(&e);
        }
        let found = candidates(&mut a, &mut b);
        assert_eq!(
            found,
            vec![
                vec![None, Some("x".to_owned())],
                vec![Some(String::new()), Some("x".to_owned())],
                vec![Some("k".to_owned()), Some("v".to_owned())],
            ]
        );
    }

    #[test]
    fn the_row_hash_drops_key_copies_pairwise() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let plan = Plan {
            source_fields: names(&["id", "email", "id"]),
            destination_fields: names(&["contact_id", "mail", "legacy_id"]),
            source_key: names(&["id"]),
            destination_key: names(&["contact_id"]),
            source_newest: None,
            destination_newest: None,
        };
        // The key copied into the key goes; the key copied into another field stays on both
        // sides, so the two lists still correspond.
        assert_eq!(
            hashed_fields(&plan),
            (names(&["email", "id"]), names(&["mail", "legacy_id"]))
        );
    }

    #[test]
    fn a_hash_text_is_its_integer_only_in_its_canonical_form() {
        assert_eq!(hash_digest("5"), 5);
        assert_eq!(hash_digest("-7"), (-7i64) as u64);
        assert_eq!(hash_digest("0"), 0);
        assert_eq!(
            hash_digest("-9223372036854775808"),
            i64::MIN as u64,
            "the least integer"
        );
        for other in ["05", "+5", "-0", "-05", " 5", "", "-"] {
            assert_ne!(hash_digest(other), 5, "{other:?}");
            assert_ne!(hash_digest(other), 0, "{other:?}");
        }
        // Texts that are no integer's still differ from one another.
        assert_ne!(hash_digest("05"), hash_digest("+5"));
    }

    fn summary(algorithm: &str, range: u64, count: u64, hash: &str) -> RangeSummary {
        RangeSummary {
            algorithm: algorithm.to_owned(),
            range,
            count,
            hash: hash.to_owned(),
            newest: Some(format!("newest-{algorithm}")),
        }
    }

    fn side(summaries: Vec<RangeSummary>) -> Summaries {
        Summaries {
            reader: None,
            pending: summaries.into(),
            last: None,
            name: "source",
        }
    }

    fn merged(a: Vec<RangeSummary>, b: Vec<RangeSummary>) -> Result<Merged, String> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(merge(&mut side(a), &mut side(b)))
            .unwrap()
    }

    #[test]
    fn merging_finds_the_differing_ranges_including_ranges_on_one_side_only() {
        let a = vec![summary("v", 0, 3, "10"), summary("v", 1, 2, "11")];
        let b = vec![summary("v", 0, 3, "10"), summary("v", 2, 5, "12")];
        let m = merged(a.clone(), b).unwrap();
        assert_eq!(m.differing, vec![1, 2]);
        assert_eq!((m.differing_ranges, m.records), (2, 7));
        assert_eq!((m.source_count, m.destination_count), (5, 8));
        assert_eq!(m.source_newest.as_deref(), Some("newest-v"));
        let m = merged(a.clone(), a.clone()).unwrap();
        assert_eq!((m.differing_ranges, m.records, m.source_count), (0, 0, 5));
        // The same count with another hash differs too.
        let m = merged(a, vec![summary("v", 0, 3, "10"), summary("v", 1, 2, "12")]).unwrap();
        assert_eq!(m.differing, vec![1]);
    }

    #[test]
    fn merging_declines_summaries_out_of_order_or_of_two_algorithms() {
        let e = merged(
            vec![summary("v", 2, 1, "1"), summary("v", 1, 1, "1")],
            vec![summary("v", 1, 1, "1"), summary("v", 2, 1, "1")],
        )
        .unwrap_err();
        assert!(e.contains("range order"), "{e}");
        let e = merged(vec![summary("a", 0, 1, "1")], vec![summary("b", 0, 1, "1")]).unwrap_err();
        assert!(e.contains("different algorithms"), "{e}");
    }

    #[test]
    fn merging_keeps_no_list_past_the_limit() {
        let a = vec![summary("v", 0, LIST_LIMIT, "1"), summary("v", 1, 5, "2")];
        let m = merged(a, Vec::new()).unwrap();
        assert_eq!((m.differing_ranges, m.records), (2, LIST_LIMIT + 5));
        assert!(m.differing.is_empty());
    }
}
