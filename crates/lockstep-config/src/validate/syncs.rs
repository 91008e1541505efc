//! `[syncs.NAME]`: a sync's endpoints, mode, cursor, key, limits and `[syncs.NAME.retry]`.
//! Its `fields` are read by `fields.rs`, its `schedule` by `schedule.rs`.
//!
//! Invariant: a sync is returned only when its source and destination are usable; every other
//! problem is reported and replaced by the default, so that one pass finds them all.

use std::collections::BTreeSet;

use lockstep_core::{DeletePolicy, EndpointSpec, FieldMapping, SyncMode, SyncSpec};
use lockstep_expr::did_you_mean;
use toml::de::DeValue;

use super::reader::{entries, list, path_key, Expected, Reader, Span, Tbl};
use super::two_way::TwoWayContext;
use crate::diagnostic::{ErrorKind, Location};
use crate::model::{RetryPolicy, Sync, SyncLocations, DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE};

/// The keys accepted in a `[syncs.NAME]` table.
pub(super) const SYNC_KEYS: &[&str] = &[
    "source",
    "destination",
    "mode",
    "cursor",
    "key",
    "batch_size",
    "max_delete_fraction",
    "tombstone",
    "reconcile_every",
    "max_rejected",
    "ledger",
    "enabled",
    "fields",
    "schedule",
    "retry",
    "verify_schedule",
    "two_way",
    "cdc",
];
/// The keys accepted in a `{ connection = "...", stream = "..." }` endpoint.
pub(super) const ENDPOINT_KEYS: &[&str] = &["connection", "stream"];
/// The keys accepted in `[syncs.NAME.retry]`.
pub(super) const RETRY_KEYS: &[&str] = &["max_attempts", "initial_backoff", "max_backoff"];

/// The accepted values of `mode`.
pub(super) const MODES: &[(&str, SyncMode)] = &[
    ("full", SyncMode::Full),
    ("incremental", SyncMode::Incremental),
    ("mirror", SyncMode::Mirror),
    ("two-way", SyncMode::TwoWay),
    ("cdc", SyncMode::Cdc),
];

impl Reader<'_> {
    pub(super) fn syncs(
        &mut self,
        root: &Tbl<'_, '_>,
        connections: &BTreeSet<String>,
    ) -> Vec<Sync> {
        let mut syncs = Vec::new();
        let Some(all) = self.table(root, "syncs") else {
            return syncs;
        };
        for (key, value) in entries(all.table) {
            let name: &str = key.get_ref();
            self.check_name("sync", key);
            let Some(t) = self.as_table(&all.child(name), name, value) else {
                continue;
            };
            if let Some(sync) = self.sync(name, &key.span(), &t, connections) {
                syncs.push(sync);
            }
        }
        syncs
    }

    pub(super) fn sync(
        &mut self,
        name: &str,
        name_span: &Span,
        t: &Tbl<'_, '_>,
        connections: &BTreeSet<String>,
    ) -> Option<Sync> {
        self.check_keys(t, SYNC_KEYS);
        let source = self.endpoint(t, "source", connections);
        let destination = self.endpoint(t, "destination", connections);
        if let (Some((s, _)), Some((d, d_span))) = (&source, &destination) {
            if s == d {
                self.error(
                    ErrorKind::SameEndpoint,
                    d_span.clone(),
                    format!(
                        "sync `{name}` writes to its own source `{}.{}`",
                        s.connection, s.stream
                    ),
                    "same as the source",
                    "a sync copies from one stream to another: name a different destination",
                );
            }
        }

        let mode = self.enumerated(t, "mode", MODES).unwrap_or_default();
        let mode_location = t.get("mode").map(|v| self.loc(&v.span()));
        let cursor = self.name_string(
            t,
            "cursor",
            "name the source field that records when a row last changed, e.g. cursor = \"updated_at\"",
        );
        // A mirror sync without a cursor reads its source in full every run (a source with no
        // change tracking); only `incremental` has nothing to offer without one.
        if mode == SyncMode::Incremental && !t.has("cursor") {
            let span = t.get("mode").map_or(t.span.clone(), |v| v.span());
            let mode_name = MODES
                .iter()
                .find(|(_, m)| *m == mode)
                .map_or("", |(n, _)| *n);
            self.error(
                ErrorKind::MissingCursor,
                span,
                format!("sync `{name}` uses mode `{mode_name}`, which needs a `cursor`"),
                "needs a cursor",
                "add cursor = \"<source field>\", a last-modified field that only grows \
                 (e.g. \"updated_at\"), or use mode = \"full\" (or \"mirror\", which reads in \
                 full every run when there is no cursor and also propagates deletes)",
            );
        }

        let (fields, field_locations) = self.fields(t);
        let (key, key_location) = self.key(t, &fields);
        let batch_size = self
            .int(
                t,
                "batch_size",
                1,
                MAX_BATCH_SIZE as i64,
                "batch_size is the number of rows per batch; the default is 10000",
            )
            .map_or(DEFAULT_BATCH_SIZE, |n| n as usize);
        let max_delete_fraction = self
            .fraction(
                t,
                "max_delete_fraction",
                "max_delete_fraction is the share of the destination one run may delete, e.g. 0.1 \
                 for 10%; the default is 0.1",
            )
            .unwrap_or(DeletePolicy::default().max_delete_fraction);
        let tombstone = self
            .name_string(
                t,
                "tombstone",
                "name the source field that marks deleted records, e.g. tombstone = \"deleted_at\"",
            )
            .map(|s| s.value.to_owned());
        let reconcile_every = self
            .int(
                t,
                "reconcile_every",
                0,
                i64::from(u32::MAX),
                "reconcile_every is how many runs pass between key-set reconciliations in mirror \
                 mode: 1 for every run, 0 for never",
            )
            .map_or(DeletePolicy::default().reconcile_every, |n| n as u32);
        let max_rejected = self.reject_limit(t);
        let use_ledger = self.bool(t, "ledger").unwrap_or(true);
        let enabled = self.bool(t, "enabled").unwrap_or(true);
        let schedule = self.schedule(t);
        let verify_schedule = self.cron_key(t, "verify_schedule");
        let retry = self.retry(t);
        let field_spans: Vec<Span> = fields
            .iter()
            .map(|f| field_span(t, &f.target).unwrap_or_else(|| t.span.clone()))
            .collect();
        let two_way = self.two_way(
            t,
            &TwoWayContext {
                name,
                mode,
                mode_span: t.get("mode").map_or(name_span.clone(), |v| v.span()),
                has_cursor: cursor.is_some(),
                fields: &fields,
                field_spans: &field_spans,
                ledger_off_span: t.get("ledger").filter(|_| !use_ledger).map(|v| v.span()),
            },
        );
        if mode == SyncMode::TwoWay && two_way.is_none() {
            return None;
        }
        let cdc = self.cdc(t, name, mode);
        // A cdc read marks deleted records with a reserved field: the sync's tombstone.
        let tombstone = match mode {
            SyncMode::Cdc => Some(lockstep_core::protocol::CDC_DELETED_FIELD.to_owned()),
            _ => tombstone,
        };

        let (source, source_span) = source?;
        let (destination, destination_span) = destination?;
        Some(Sync {
            spec: SyncSpec {
                name: name.to_owned(),
                source,
                destination,
                mode,
                cursor_field: cursor.as_ref().map(|c| c.value.to_owned()),
                key,
                fields,
                batch_size,
                delete: DeletePolicy {
                    max_delete_fraction,
                    tombstone,
                    reconcile_every,
                },
                max_rejected,
                use_ledger,
                two_way,
                cdc,
            },
            enabled,
            schedule,
            verify_schedule,
            retry,
            location: self.loc(name_span),
            locations: SyncLocations {
                source: self.loc(&source_span),
                destination: self.loc(&destination_span),
                mode: mode_location,
                cursor: cursor.map(|c| self.loc(&c.span)),
                key: key_location,
                fields: field_locations,
            },
        })
    }

    /// A sync's source or destination; reports it missing too.
    pub(super) fn endpoint(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        connections: &BTreeSet<String>,
    ) -> Option<(EndpointSpec, Span)> {
        let path = t.child(key);
        let Some(value) = t.get(key) else {
            self.missing(
                t,
                key,
                format!(
                    "add {key} = \"connection.stream\", e.g. {key} = \"crm.contacts\", or \
                     {key} = {{ connection = \"crm\", stream = \"contacts\" }}"
                ),
            );
            return None;
        };
        let (connection, connection_span, stream) = match value.get_ref() {
            DeValue::String(s) => {
                let split = s
                    .split_once('.')
                    .filter(|(c, st)| !c.is_empty() && !st.is_empty());
                let Some((connection, stream)) = split else {
                    let hint =
                        if !s.is_empty() && !s.contains('.') && connections.contains(s.as_ref()) {
                            format!(
                            "add the stream: {key} = \"{s}.<stream>\", or {key} = {{ connection = \
                             \"{s}\", stream = \"...\" }}"
                        )
                        } else {
                            format!(
                                "write {key} = \"connection.stream\", e.g. \"crm.contacts\", or \
                             {key} = {{ connection = \"crm\", stream = \"contacts\" }}"
                            )
                        };
                    self.error(
                        ErrorKind::InvalidEndpoint,
                        value.span(),
                        format!("`{path}` must be \"connection.stream\", found `{s}`"),
                        "not connection.stream",
                        hint,
                    );
                    return None;
                };
                let span = match self.verbatim_start(s, &value.span()) {
                    Some(start) => start..start + connection.len(),
                    None => value.span(),
                };
                (connection.to_owned(), span, stream.to_owned())
            }
            DeValue::Table(table) => {
                let inner = Tbl {
                    table,
                    path: path.clone(),
                    span: value.span(),
                };
                self.check_keys(&inner, ENDPOINT_KEYS);
                let mut parts = Vec::new();
                for part in ENDPOINT_KEYS {
                    if inner.has(part) {
                        parts.push(self.name_string(
                            &inner,
                            part,
                            &format!("write the {part}'s name, e.g. {part} = \"contacts\""),
                        ));
                    } else {
                        self.missing(
                            &inner,
                            part,
                            "write { connection = \"crm\", stream = \"contacts\" }",
                        );
                        parts.push(None);
                    }
                }
                let (Some(Some(connection)), Some(Some(stream))) = (parts.first(), parts.get(1))
                else {
                    return None;
                };
                (
                    connection.value.to_owned(),
                    connection.span.clone(),
                    stream.value.to_owned(),
                )
            }
            _ => {
                self.wrong_type(&path, key, value, Expected::Endpoint);
                return None;
            }
        };
        if !connections.contains(&connection) {
            let defined: Vec<&str> = connections.iter().map(String::as_str).collect();
            let hint = match did_you_mean(&connection, defined.iter().copied()) {
                Some(suggestion) => format!(
                    "did you mean `{suggestion}`? defined connections: {}",
                    list(&defined)
                ),
                None if defined.is_empty() => format!(
                    "no connections are defined: add a [connections.{}] table with a connector",
                    path_key(&connection)
                ),
                None => format!(
                    "defined connections: {}; or define this one in a [connections.{}] table",
                    list(&defined),
                    path_key(&connection)
                ),
            };
            self.error(
                ErrorKind::UnknownConnection,
                connection_span,
                format!("`{path}` names connection `{connection}`, which is not defined"),
                "unknown connection",
                hint,
            );
            return None;
        }
        Some((EndpointSpec { connection, stream }, value.span()))
    }

    pub(super) fn key(
        &mut self,
        t: &Tbl<'_, '_>,
        fields: &[FieldMapping],
    ) -> (Vec<String>, Option<Location>) {
        let Some((names, span)) = self.strings(t, "key", true) else {
            return (Vec::new(), None);
        };
        let path = t.child("key");
        if names.is_empty()
            && matches!(t.get("key").map(|v| v.get_ref()), Some(DeValue::Array(a)) if a.is_empty())
        {
            self.error(
                ErrorKind::EmptyKey,
                span.clone(),
                format!("`{path}` is an empty list"),
                "empty key",
                "list at least one destination field, e.g. key = [\"id\"], or remove `key` to match \
                 on the source's primary key",
            );
        }
        // Destination fields: `props.score` writes field `props`.
        let columns: Vec<String> = fields.iter().map(FieldMapping::column).collect();
        let mut targets: Vec<&str> = Vec::new();
        for c in &columns {
            if !targets.contains(&c.as_str()) {
                targets.push(c);
            }
        }
        let mut seen = BTreeSet::new();
        let mut key = Vec::new();
        for name in &names {
            if name.value.trim().is_empty() {
                self.error(
                    ErrorKind::InvalidValue,
                    name.span.clone(),
                    format!("`{path}` has an empty field name"),
                    "empty",
                    "write destination field names, e.g. key = [\"email\"]",
                );
                continue;
            }
            if !seen.insert(name.value) {
                self.error(
                    ErrorKind::DuplicateField,
                    name.span.clone(),
                    format!(
                        "destination field `{}` appears twice in `{path}`",
                        name.value
                    ),
                    "repeated",
                    "list each key field once",
                );
                continue;
            }
            if !targets.is_empty() && !targets.contains(&name.value) {
                let hint = match did_you_mean(name.value, targets.iter().copied()) {
                    Some(suggestion) => format!(
                        "did you mean `{suggestion}`? the key names destination fields, and the \
                         mapping produces: {}",
                        list(&targets)
                    ),
                    None => format!(
                        "the key names destination fields, and the mapping produces: {}; add \
                         `{}` to `{}`",
                        list(&targets),
                        name.value,
                        t.child("fields")
                    ),
                };
                self.error(
                    ErrorKind::KeyNotMapped,
                    name.span.clone(),
                    format!(
                        "key field `{}` is not a destination field of `{}`",
                        name.value,
                        t.child("fields")
                    ),
                    "not mapped",
                    hint,
                );
            }
            key.push(name.value.to_owned());
        }
        (key, Some(self.loc(&span)))
    }

    pub(super) fn retry(&mut self, t: &Tbl<'_, '_>) -> RetryPolicy {
        let mut retry = RetryPolicy::default();
        let Some(rt) = self.table(t, "retry") else {
            return retry;
        };
        self.check_keys(&rt, RETRY_KEYS);
        if let Some(n) = self.int(
            &rt,
            "max_attempts",
            1,
            100,
            "max_attempts counts every attempt, the first included; 1 means no retry",
        ) {
            retry.max_attempts = n as u32;
        }
        let initial = self.duration(&rt, "initial_backoff", false);
        let max = self.duration(&rt, "max_backoff", false);
        if let Some((d, _)) = initial {
            retry.initial_backoff = d;
        }
        if let Some((d, _)) = max {
            retry.max_backoff = d;
        }
        if retry.max_backoff < retry.initial_backoff {
            let span = max.or(initial).map_or(rt.span.clone(), |(_, span)| span);
            self.error(
                ErrorKind::OutOfRange,
                span,
                format!(
                    "`{}` is shorter than `{}`",
                    rt.child("max_backoff"),
                    rt.child("initial_backoff")
                ),
                "shorter than initial_backoff",
                "the backoff doubles from initial_backoff up to max_backoff: make max_backoff at \
                 least as long (defaults: 10s and 10m)",
            );
        }
        retry
    }
}

/// Where the mapping line of target field `target` is in sync table `t`.
fn field_span(t: &Tbl<'_, '_>, target: &str) -> Option<Span> {
    match t.get("fields")?.get_ref() {
        DeValue::Table(table) => table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == target)
            .map(|(_, v)| v.span()),
        _ => None,
    }
}
