//! The daemon's Prometheus metrics, kept in memory with `prometheus-client` and written in the
//! OpenMetrics text format.
//!
//! Counters and the run duration histogram live as long as the daemon; the per-sync gauges
//! (`lockstep_rejected_records`, `lockstep_open_conflicts`, `lockstep_sync_running`, and for
//! cdc syncs `lockstep_cdc_retained_wal_bytes` and `lockstep_cdc_lag_seconds` from their
//! committed checkpoints) are built at each scrape from the configured syncs, so that every sync has them before its first run
//! and a sync removed from the config loses them.
//!
//! Hand-written here: the escaping of label values ([`Escaped`]), because `prometheus-client`
//! writes label values as they are and a `"` or `\` in one would break the exposition.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use lockstep_core::{RunMetrics, RunStatus};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the run duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
];

/// A label value, escaped for the text format when it is written.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Escaped(String);

impl From<&str> for Escaped {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl EncodeLabelValue for Escaped {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                other => encoder.write_char(other)?,
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabel {
    sync: Escaped,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncStatusLabels {
    sync: Escaped,
    status: Escaped,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncKindLabels {
    sync: Escaped,
    kind: Escaped,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabel {
    channel: Escaped,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: Escaped,
}

fn sync_label(sync: &str) -> SyncLabel {
    SyncLabel { sync: sync.into() }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// A gauge that holds seconds since the epoch.
type TimeGauge = Gauge<f64, AtomicU64>;

pub(crate) struct Metrics {
    runs: Family<SyncStatusLabels, Counter>,
    records: Family<SyncKindLabels, Counter>,
    durations: Family<SyncLabel, Histogram, fn() -> Histogram>,
    last_success: Family<SyncLabel, TimeGauge>,
    /// Serializes updates of `last_success`, which keep the latest time.
    last_success_update: Mutex<()>,
    rejected_pending: Mutex<BTreeMap<String, u64>>,
    open_conflicts: Mutex<BTreeMap<String, u64>>,
    crashes: Family<SyncLabel, Counter>,
    retries: Family<SyncLabel, Counter>,
    alerts: Family<SyncKindLabels, Counter>,
    alert_failures: Family<ChannelLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    verify_differences: Family<SyncLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            runs: Family::default(),
            records: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            last_success: Family::default(),
            last_success_update: Mutex::new(()),
            rejected_pending: Mutex::new(BTreeMap::new()),
            open_conflicts: Mutex::new(BTreeMap::new()),
            crashes: Family::default(),
            retries: Family::default(),
            alerts: Family::default(),
            alert_failures: Family::default(),
            reloads: Family::default(),
            verify_differences: Family::default(),
        }
    }
}

/// What `/metrics` needs to know about a configured sync besides the counters.
pub(crate) struct SyncGauge {
    pub name: String,
    pub running: bool,
    /// A cdc sync's slot, from its committed checkpoint.
    pub cdc: Option<crate::cdc_slot::SlotStatus>,
}

impl Metrics {
    /// Counts one finished run.
    pub(crate) fn run_finished(
        &self,
        sync: &str,
        status: RunStatus,
        metrics: &RunMetrics,
        duration: Duration,
        finished_at: f64,
    ) {
        self.runs
            .get_or_create(&SyncStatusLabels {
                sync: sync.into(),
                status: status.as_str().into(),
            })
            .inc();
        for (kind, value) in metrics.entries() {
            self.records
                .get_or_create(&SyncKindLabels {
                    sync: sync.into(),
                    kind: kind.into(),
                })
                .inc_by(value);
        }
        self.durations
            .get_or_create(&sync_label(sync))
            .observe(duration.as_secs_f64());
        if status == RunStatus::Succeeded {
            let _update = self.lock(&self.last_success_update);
            self.last_success
                .get_or_create(&sync_label(sync))
                .set(finished_at);
        }
    }

    /// Sets the last success time (seconds since the epoch) without counting a run, for
    /// history read at start-up.
    pub(crate) fn set_last_success(&self, sync: &str, at: f64) {
        let _update = self.lock(&self.last_success_update);
        let gauge = self.last_success.get_or_create(&sync_label(sync));
        if at > gauge.get() {
            gauge.set(at);
        }
    }

    pub(crate) fn set_rejected_pending(&self, sync: &str, count: u64) {
        self.lock(&self.rejected_pending)
            .insert(sync.to_owned(), count);
    }

    /// The rejected-records gauge of `sync`, when it has been set.
    pub(crate) fn rejected_pending(&self, sync: &str) -> Option<u64> {
        self.lock(&self.rejected_pending).get(sync).copied()
    }

    /// Sets how many conflicts of `sync` wait for a person.
    pub(crate) fn set_open_conflicts(&self, sync: &str, count: u64) {
        self.lock(&self.open_conflicts)
            .insert(sync.to_owned(), count);
    }

    /// Records the differences the last scheduled verify of `sync` found.
    pub(crate) fn set_verify_differences(&self, sync: &str, count: u64) {
        self.verify_differences
            .get_or_create(&sync_label(sync))
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub(crate) fn worker_crashed(&self, sync: &str) {
        self.crashes.get_or_create(&sync_label(sync)).inc();
    }

    pub(crate) fn retried(&self, sync: &str) {
        self.retries.get_or_create(&sync_label(sync)).inc();
    }

    pub(crate) fn alert_sent(&self, sync: &str, kind: &'static str) {
        self.alerts
            .get_or_create(&SyncKindLabels {
                sync: sync.into(),
                kind: kind.into(),
            })
            .inc();
    }

    pub(crate) fn alert_failed(&self, channel: &'static str) {
        self.alert_failures
            .get_or_create(&ChannelLabel {
                channel: channel.into(),
            })
            .inc();
    }

    pub(crate) fn config_reload(&self, result: &'static str) {
        self.reloads
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    fn lock<'m, T>(&self, mutex: &'m Mutex<T>) -> std::sync::MutexGuard<'m, T> {
        mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The exposition text. `syncs` are the configured syncs: each gets its gauges even
    /// before its first run.
    pub(crate) fn render(&self, syncs: &[SyncGauge]) -> String {
        let mut registry = Registry::default();
        // Help texts end without a period: the library adds one.
        registry.register(
            "lockstep_runs",
            "Runs finished, by sync and status",
            self.runs.clone(),
        );
        registry.register(
            "lockstep_records",
            "Records of finished runs, by sync and kind (read, added, updated, unchanged, \
             deleted, conflicts, rejected)",
            self.records.clone(),
        );
        registry.register(
            "lockstep_run_duration_seconds",
            "How long runs took, by sync",
            self.durations.clone(),
        );
        registry.register(
            "lockstep_last_success_timestamp_seconds",
            "When the sync last finished a run successfully (Unix time)",
            self.last_success.clone(),
        );

        let rejected = Family::<SyncLabel, Gauge>::default();
        let conflicts = Family::<SyncLabel, Gauge>::default();
        let running = Family::<SyncLabel, Gauge>::default();
        {
            let pending = self.lock(&self.rejected_pending);
            let open = self.lock(&self.open_conflicts);
            for s in syncs {
                let label = sync_label(&s.name);
                let count = pending.get(&s.name).copied().unwrap_or(0);
                rejected
                    .get_or_create(&label)
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
                let queued = open.get(&s.name).copied().unwrap_or(0);
                conflicts
                    .get_or_create(&label)
                    .set(i64::try_from(queued).unwrap_or(i64::MAX));
                running.get_or_create(&label).set(i64::from(s.running));
            }
        }
        let retained = Family::<SyncLabel, Gauge>::default();
        let lag = Family::<SyncLabel, Gauge<f64, AtomicU64>>::default();
        let now = chrono::Utc::now();
        for s in syncs {
            let Some(slot) = &s.cdc else { continue };
            let label = sync_label(&s.name);
            retained
                .get_or_create(&label)
                .set(i64::try_from(slot.retained_wal_bytes).unwrap_or(i64::MAX));
            if let Some(seconds) = slot.lag_seconds(now) {
                lag.get_or_create(&label).set(seconds);
            }
        }
        registry.register(
            "lockstep_cdc_retained_wal_bytes",
            "WAL the source server retained for a cdc sync's replication slot when its last \
             read began, in bytes",
            retained,
        );
        registry.register(
            "lockstep_cdc_lag_seconds",
            "How far a cdc sync's destination is behind its source: seconds since the moment \
             before which it has every change",
            lag,
        );
        registry.register(
            "lockstep_rejected_records",
            "Rejected records not yet retried, by sync (counted up to 10000)",
            rejected,
        );
        registry.register(
            "lockstep_open_conflicts",
            "Conflicts waiting for a person, by sync (two-way sync only)",
            conflicts,
        );
        registry.register(
            "lockstep_sync_running",
            "1 while a worker runs the sync",
            running,
        );
        registry.register(
            "lockstep_worker_crashes",
            "Worker processes that died without a report (signal, abort, out of memory)",
            self.crashes.clone(),
        );
        registry.register(
            "lockstep_retries",
            "Runs retried after a transient or rate-limited failure",
            self.retries.clone(),
        );
        registry.register(
            "lockstep_alerts",
            "Alerts raised, by sync and kind",
            self.alerts.clone(),
        );
        registry.register(
            "lockstep_alert_delivery_failures",
            "Alerts a channel (webhook, email) could not deliver",
            self.alert_failures.clone(),
        );
        registry.register(
            "lockstep_verify_differences",
            "Records missing, extra or different in the destination (and keys it holds twice) \
             at the sync's last scheduled verify",
            self.verify_differences.clone(),
        );
        registry.register(
            "lockstep_config_reloads",
            "Config reloads on SIGHUP, by result",
            self.reloads.clone(),
        );

        let mut out = String::new();
        // Writing to a String fails only if a metric cannot be encoded, which none of these
        // can (every gauge holds an i64 or an f64); the text so far is still served.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(%error, "could not encode every metric");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_a_histogram() {
        let m = Metrics::default();
        let metrics = RunMetrics {
            read: 5,
            added: 2,
            ..Default::default()
        };
        m.run_finished(
            "a\"b",
            RunStatus::Succeeded,
            &metrics,
            Duration::from_millis(700),
            1700000000.0,
        );
        m.run_finished(
            "a\"b",
            RunStatus::Failed,
            &RunMetrics::default(),
            Duration::from_secs(3),
            1700000005.0,
        );
        m.set_last_success("a\"b", 1600000000.0);
        m.set_rejected_pending("a\"b", 7);
        m.set_open_conflicts("a\"b", 2);
        m.config_reload("ok");
        let text = m.render(&[SyncGauge {
            name: "a\"b".into(),
            running: true,
            cdc: Some(crate::cdc_slot::SlotStatus {
                slot: "s".into(),
                retained_wal_bytes: 4096,
                caught_up_at: Some(chrono::Utc::now() - chrono::Duration::seconds(30)),
            }),
        }]);
        assert!(
            text.contains("lockstep_cdc_retained_wal_bytes{sync=\"a\\\"b\"} 4096"),
            "{text}"
        );
        let lag: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("lockstep_cdc_lag_seconds{sync=\"a\\\"b\"} "))
            .unwrap_or_else(|| panic!("no lag gauge in {text}"))
            .parse()
            .unwrap();
        assert!((30.0..60.0).contains(&lag), "{lag}");
        assert!(
            text.contains("lockstep_runs_total{sync=\"a\\\"b\",status=\"succeeded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lockstep_records_total{sync=\"a\\\"b\",kind=\"read\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("lockstep_run_duration_seconds_bucket{le=\"1.0\",sync=\"a\\\"b\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lockstep_run_duration_seconds_bucket{le=\"5.0\",sync=\"a\\\"b\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("lockstep_run_duration_seconds_count{sync=\"a\\\"b\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("lockstep_last_success_timestamp_seconds{sync=\"a\\\"b\"} 1700000000"),
            "{text}"
        );
        assert!(
            text.contains("lockstep_rejected_records{sync=\"a\\\"b\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("lockstep_config_reloads_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lockstep_open_conflicts{sync=\"a\\\"b\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("lockstep_sync_running{sync=\"a\\\"b\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE lockstep_run_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("# TYPE lockstep_runs counter"), "{text}");
        assert!(
            text.contains("# HELP lockstep_runs Runs finished, by sync and status.\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
