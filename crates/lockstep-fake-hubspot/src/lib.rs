//! A stateful fake of HubSpot's CRM v3 API, for tests: an axum server on 127.0.0.1 at a
//! free port, holding contacts, companies and deals in memory.
//!
//! It follows HubSpot's public documentation, and each behaviour names the page it follows.
//! Where the documentation leaves a choice open, the fake takes the stricter reading: it is
//! never more forgiving than HubSpot (a fake that accepts what HubSpot refuses would let a
//! connector pass tests and fail in production).
//!
//! What it serves (all under `/crm/v3`, all requiring `Authorization: Bearer <token>`):
//! - `GET /objects/{type}`: `limit` (at most 100), `after`, `properties`, `archived` paging;
//! - `POST /objects/{type}/search`: filter groups, one sort, `limit` (at most 200), `after`,
//!   and the 10,000-result cap, under the search endpoints' own lower rate limit;
//! - `POST /objects/{type}/batch/{create,update,upsert,archive}`: at most 100 inputs, with
//!   multi-status (207) answers for inputs whose records do not exist;
//! - `GET /properties/{type}`: property definitions with types and read-only flags.
//!
//! Faults for tests: a rolling rate limit answered with HubSpot's 429 body and headers,
//! random 5xx answers, and slow answers ([`Options`]).
//!
//! Invariants: every write sets the record's last-modified property and `updatedAt` to the
//! current time in milliseconds, never earlier than the previous write's (so a cursor on it
//! never goes back), and all records of one batch share it; a refused request changes
//! nothing.

mod api;
mod model;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use model::{ObjectType, Property, PropertyType, Record};

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The only bearer token accepted.
    pub token: String,
    /// Requests allowed per rolling window on the general endpoints, and the window
    /// (HubSpot's private-app limit is 100 per 10 s).
    pub rate_limit: Option<(u32, Duration)>,
    /// Requests per second allowed on the search endpoints.
    pub search_per_second: Option<u32>,
    /// The share of requests (0 to 1) answered with a random 500, 502 or 503 before doing
    /// anything.
    pub fault_rate: f64,
    /// How long each answer is held back.
    pub delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            token: "fake-hubspot-token".into(),
            rate_limit: None,
            search_per_second: None,
            fault_rate: 0.0,
            delay: Duration::ZERO,
        }
    }
}

/// A running fake. The server stops when the tokio runtime that started it ends.
#[derive(Clone)]
pub struct FakeHubSpot {
    addr: SocketAddr,
    state: Arc<api::Shared>,
}

impl FakeHubSpot {
    /// Starts a fake on 127.0.0.1 at a free port.
    pub async fn start(options: Options) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(api::Shared::new(options));
        let app = api::router(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state })
    }

    /// The base URL to give a client: `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bearer token the fake accepts.
    pub fn token(&self) -> String {
        self.state.options.lock().unwrap().token.clone()
    }

    /// Changes the behaviour of later requests (rate limit, faults, delay).
    pub fn set_options(&self, options: Options) {
        *self.state.options.lock().unwrap() = options;
    }

    /// Creates a record directly, as a person in HubSpot's UI would; returns its id.
    /// Properties are taken as given, without the API's validation.
    pub fn insert(&self, object: ObjectType, properties: &[(&str, &str)]) -> String {
        let mut store = self.state.store.lock().unwrap();
        let now = store.tick();
        let props = properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        store.create(object, props, now).id.to_string()
    }

    /// Changes a record directly, as a person in HubSpot's UI would: sets the properties and
    /// the last-modified time. Returns false when there is no such record.
    pub fn update(&self, object: ObjectType, id: &str, properties: &[(&str, &str)]) -> bool {
        let mut store = self.state.store.lock().unwrap();
        let now = store.tick();
        let Ok(id) = id.parse() else {
            return false;
        };
        store
            .modify(object, id, |record| {
                for (k, v) in properties {
                    record.properties.insert(k.to_string(), v.to_string());
                }
                record.updated_ms = now;
            })
            .is_some()
    }

    /// Archives a record directly, as a person in HubSpot's UI would. Returns false when
    /// there is no such live record.
    pub fn archive(&self, object: ObjectType, id: &str) -> bool {
        let mut store = self.state.store.lock().unwrap();
        let now = store.tick();
        let Ok(id) = id.parse() else {
            return false;
        };
        store
            .modify(object, id, |record| {
                let live = record.archived_ms.is_none();
                if live {
                    record.archived_ms = Some(now);
                    record.updated_ms = now;
                }
                live
            })
            .unwrap_or(false)
    }

    /// Every record of `object`, archived or not, in id order.
    pub fn records(&self, object: ObjectType) -> Vec<Record> {
        self.state.store.lock().unwrap().all(object)
    }

    /// How many requests reached the fake, and how many of them it answered 429.
    pub fn counts(&self) -> (u64, u64) {
        let c = self.state.counters.lock().unwrap();
        (c.requests, c.throttled)
    }

    /// The most requests the fake was answering at the same time, counted while each is held
    /// back by [`Options::delay`] (zero without a delay).
    pub fn most_concurrent(&self) -> u64 {
        self.state.counters.lock().unwrap().most_in_delay
    }
}

/// Shared counters of a fake.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: u64,
    pub throttled: u64,
    /// Requests inside their answer delay right now, and the most there ever were.
    pub in_delay: u64,
    pub most_in_delay: u64,
}

pub(crate) type Locked<T> = Mutex<T>;
