//! Forwards the plugin's `tracing` events to the host's subscriber.
//!
//! Each cdylib has its own copy of `tracing`'s global dispatcher, so the plugin installs a
//! subscriber of its own whose only job is to hand every event to the host context.

use std::fmt::Write as _;
use std::sync::{Once, RwLock};

use abi_stable::std_types::RStr;
use lockstep_plugin_api::{HostContextBox, LogLevel};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

static HOST: RwLock<Option<HostContextBox>> = RwLock::new(None);

/// Makes `host` the receiver of this plugin's events, installing the forwarder once.
pub(crate) fn install(host: HostContextBox) {
    if let Ok(mut slot) = HOST.write() {
        *slot = Some(host);
    }
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(Forwarder);
        // Another subscriber may already be installed when connector code is linked into a
        // test binary directly; the forwarder is then simply not used.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

struct Forwarder;

fn level_of(level: &Level) -> LogLevel {
    match *level {
        Level::ERROR => LogLevel::ERROR,
        Level::WARN => LogLevel::WARN,
        Level::INFO => LogLevel::INFO,
        Level::DEBUG => LogLevel::DEBUG,
        _ => LogLevel::TRACE,
    }
}

impl<S: Subscriber> Layer<S> for Forwarder {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Ok(slot) = HOST.read() else { return };
        let Some(host) = slot.as_ref() else { return };
        let level = level_of(event.metadata().level());
        if level.0 > host.max_level().0 {
            return;
        }
        let mut visitor = Collect::default();
        event.record(&mut visitor);
        let fields = if visitor.fields.is_empty() {
            String::new()
        } else {
            serde_json::Value::Object(visitor.fields).to_string()
        };
        host.log(
            level,
            RStr::from_str(event.metadata().target()),
            RStr::from_str(&visitor.message),
            RStr::from_str(&fields),
        );
    }
}

#[derive(Default)]
struct Collect {
    message: String,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Collect {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields
                .insert(field.name().to_owned(), format!("{value:?}").into());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields.insert(field.name().to_owned(), value.into());
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().to_owned(), value.into());
    }
}
