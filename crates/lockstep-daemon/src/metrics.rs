//! The daemon's Prometheus metrics, kept in memory and written in the text exposition format
//! (version 0.0.4) by hand: a handful of counters, gauges and one histogram need no library.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use lockstep_core::{RunMetrics, RunStatus};

/// Upper bounds of the run duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
];

#[derive(Default)]
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    runs: BTreeMap<(String, &'static str), u64>,
    records: BTreeMap<(String, &'static str), u64>,
    durations: BTreeMap<String, Histogram>,
    last_success: BTreeMap<String, f64>,
    rejected_pending: BTreeMap<String, u64>,
    crashes: BTreeMap<String, u64>,
    retries: BTreeMap<String, u64>,
    alerts: BTreeMap<(String, &'static str), u64>,
    alert_failures: BTreeMap<&'static str, u64>,
    reloads: BTreeMap<&'static str, u64>,
}

#[derive(Default, Clone)]
struct Histogram {
    /// Cumulative counts per bucket of [`DURATION_BUCKETS`].
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// What `/metrics` needs to know about a configured sync besides the counters.
pub(crate) struct SyncGauge {
    pub name: String,
    pub running: bool,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one finished run.
    pub(crate) fn run_finished(
        &self,
        sync: &str,
        status: RunStatus,
        metrics: &RunMetrics,
        duration: Duration,
        finished_at: f64,
    ) {
        let mut m = self.lock();
        *m.runs
            .entry((sync.to_owned(), status.as_str()))
            .or_default() += 1;
        for (kind, value) in metrics.entries() {
            *m.records.entry((sync.to_owned(), kind)).or_default() += value;
        }
        let seconds = duration.as_secs_f64();
        let h = m.durations.entry(sync.to_owned()).or_default();
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
        if status == RunStatus::Succeeded {
            m.last_success.insert(sync.to_owned(), finished_at);
        }
    }

    /// Sets the last success time (seconds since the epoch) without counting a run, for
    /// history read at start-up.
    pub(crate) fn set_last_success(&self, sync: &str, at: f64) {
        let mut m = self.lock();
        let entry = m.last_success.entry(sync.to_owned()).or_insert(at);
        *entry = entry.max(at);
    }

    pub(crate) fn set_rejected_pending(&self, sync: &str, count: u64) {
        self.lock().rejected_pending.insert(sync.to_owned(), count);
    }

    pub(crate) fn worker_crashed(&self, sync: &str) {
        *self.lock().crashes.entry(sync.to_owned()).or_default() += 1;
    }

    pub(crate) fn retried(&self, sync: &str) {
        *self.lock().retries.entry(sync.to_owned()).or_default() += 1;
    }

    pub(crate) fn alert_sent(&self, sync: &str, kind: &'static str) {
        *self
            .lock()
            .alerts
            .entry((sync.to_owned(), kind))
            .or_default() += 1;
    }

    pub(crate) fn alert_failed(&self, channel: &'static str) {
        *self.lock().alert_failures.entry(channel).or_default() += 1;
    }

    pub(crate) fn config_reload(&self, result: &'static str) {
        *self.lock().reloads.entry(result).or_default() += 1;
    }

    /// The exposition text. `syncs` are the configured syncs: each gets its gauges even
    /// before its first run.
    pub(crate) fn render(&self, syncs: &[SyncGauge]) -> String {
        let m = self.lock();
        let mut out = String::new();
        let mut lines: Vec<String> = Vec::new();

        let name = family(
            &mut out,
            "lockstep_runs_total",
            "counter",
            "Runs finished, by sync and status.",
        );
        for ((sync, status), v) in &m.runs {
            lines.push(format!(
                "{name}{{sync=\"{}\",status=\"{status}\"}} {v}",
                esc(sync)
            ));
        }
        flush(&mut out, &mut lines);

        let name = family(&mut out, "lockstep_records_total",
            "counter",
            "Records of finished runs, by sync and kind (read, added, updated, unchanged, deleted, conflicts, rejected).",
        );
        for ((sync, kind), v) in &m.records {
            lines.push(format!(
                "{name}{{sync=\"{}\",kind=\"{kind}\"}} {v}",
                esc(sync)
            ));
        }
        flush(&mut out, &mut lines);

        let name = family(
            &mut out,
            "lockstep_run_duration_seconds",
            "histogram",
            "How long runs took, by sync.",
        );
        for (sync, h) in &m.durations {
            let sync = esc(sync);
            for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
                lines.push(format!(
                    "{name}_bucket{{sync=\"{sync}\",le=\"{bound}\"}} {}",
                    h.buckets[i]
                ));
            }
            lines.push(format!(
                "{name}_bucket{{sync=\"{sync}\",le=\"+Inf\"}} {}",
                h.count
            ));
            lines.push(format!("{name}_sum{{sync=\"{sync}\"}} {}", h.sum));
            lines.push(format!("{name}_count{{sync=\"{sync}\"}} {}", h.count));
        }
        flush(&mut out, &mut lines);

        let name = family(
            &mut out,
            "lockstep_last_success_timestamp_seconds",
            "gauge",
            "When the sync last finished a run successfully (Unix time).",
        );
        for (sync, v) in &m.last_success {
            lines.push(format!("{name}{{sync=\"{}\"}} {v}", esc(sync)));
        }
        flush(&mut out, &mut lines);

        let name = family(
            &mut out,
            "lockstep_rejected_records",
            "gauge",
            "Rejected records not yet retried, by sync (counted up to 10000).",
        );
        for s in syncs {
            let v = m.rejected_pending.get(&s.name).copied().unwrap_or(0);
            lines.push(format!("{name}{{sync=\"{}\"}} {v}", esc(&s.name)));
        }
        flush(&mut out, &mut lines);

        let name = family(
            &mut out,
            "lockstep_open_conflicts",
            "gauge",
            "Conflicts waiting for a person, by sync (two-way sync only).",
        );
        for s in syncs {
            lines.push(format!("{name}{{sync=\"{}\"}} 0", esc(&s.name)));
        }
        flush(&mut out, &mut lines);

        let name = family(
            &mut out,
            "lockstep_sync_running",
            "gauge",
            "1 while a worker runs the sync.",
        );
        for s in syncs {
            lines.push(format!(
                "{name}{{sync=\"{}\"}} {}",
                esc(&s.name),
                u8::from(s.running)
            ));
        }
        flush(&mut out, &mut lines);

        let name = family(
            &mut out,
            "lockstep_worker_crashes_total",
            "counter",
            "Worker processes that died without a report (signal, abort, out of memory).",
        );
        for (sync, v) in &m.crashes {
            lines.push(format!("{name}{{sync=\"{}\"}} {v}", esc(sync)));
        }
        flush(&mut out, &mut lines);

        let name = family(
            &mut out,
            "lockstep_retries_total",
            "counter",
            "Runs retried after a transient or rate-limited failure.",
        );
        for (sync, v) in &m.retries {
            lines.push(format!("{name}{{sync=\"{}\"}} {v}", esc(sync)));
        }
        flush(&mut out, &mut lines);

        let name = family(
            &mut out,
            "lockstep_alerts_total",
            "counter",
            "Alerts raised, by sync and kind.",
        );
        for ((sync, kind), v) in &m.alerts {
            lines.push(format!(
                "{name}{{sync=\"{}\",kind=\"{kind}\"}} {v}",
                esc(sync)
            ));
        }
        flush(&mut out, &mut lines);

        let name = family(
            &mut out,
            "lockstep_alert_delivery_failures_total",
            "counter",
            "Alerts a channel (webhook, email) could not deliver.",
        );
        for (channel, v) in &m.alert_failures {
            lines.push(format!("{name}{{channel=\"{channel}\"}} {v}"));
        }
        flush(&mut out, &mut lines);

        let name = family(
            &mut out,
            "lockstep_config_reloads_total",
            "counter",
            "Config reloads on SIGHUP, by result.",
        );
        for (result, v) in &m.reloads {
            lines.push(format!("{name}{{result=\"{result}\"}} {v}"));
        }
        flush(&mut out, &mut lines);
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) -> String {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    name.to_owned()
}

fn flush(out: &mut String, lines: &mut Vec<String>) {
    for line in lines.drain(..) {
        out.push_str(&line);
        out.push('\n');
    }
}

/// A label value escaped for the text format.
fn esc(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
        let text = m.render(&[SyncGauge {
            name: "a\"b".into(),
            running: true,
        }]);
        assert!(
            text.contains("lockstep_runs_total{sync=\"a\\\"b\",status=\"succeeded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lockstep_records_total{sync=\"a\\\"b\",kind=\"read\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("lockstep_run_duration_seconds_bucket{sync=\"a\\\"b\",le=\"1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lockstep_run_duration_seconds_bucket{sync=\"a\\\"b\",le=\"5\"} 2"),
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
            text.contains("lockstep_open_conflicts{sync=\"a\\\"b\"} 0"),
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
    }
}
