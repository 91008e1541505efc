//! A stateful fake of Mailchimp's Marketing API 3.0, for tests: an axum server on 127.0.0.1
//! at a free port, holding audiences (lists) with merge fields and members in memory, and
//! [`prism::Prism`], Prism's validating proxy set between a client and the fake so that every
//! request and answer is checked against Mailchimp's published OpenAPI description.
//!
//! It follows Mailchimp's public documentation (mailchimp.com/developer/marketing), and each
//! behaviour names the page it follows. Where the documentation leaves a choice open, the
//! fake takes the stricter reading: it is never more forgiving than Mailchimp. In particular
//! it applies any status a batch sends, resubscribing an unsubscribed member too, so that a
//! connector's consent rules are what the tests see, not the fake's kindness.
//!
//! What it serves (paths relative to the API root `https://<dc>.api.mailchimp.com/3.0`, all
//! requiring HTTP Basic authentication with the API key as the password):
//! - `GET /ping`;
//! - `GET /lists/{list_id}/merge-fields` and `GET /lists/{list_id}/members` with `count`
//!   (default 10, at most 1000), `offset`, `status`, `since_last_changed`,
//!   `before_last_changed`, `sort_field`, `sort_dir` and `fields`; archived members only
//!   with `status=archived`;
//! - `POST /lists/{list_id}`: batch subscribe or update, at most 500 members, per-member
//!   `errors`;
//! - `DELETE /lists/{list_id}/members/{hash}` (archive) and
//!   `POST /lists/{list_id}/members/{hash}/actions/delete-permanent`.
//!
//! Faults for tests ([`Options`]): the limit of simultaneous connections (10, answered 429
//! beyond), a share of requests answered 429 or 5xx before doing anything, slow answers.
//! Every error is a problem document (`type`, `title`, `status`, `detail`, `instance`).
//!
//! Invariants: a refused request or member changes nothing; `last_changed` is set (in whole
//! seconds) on every change of a member and never goes back.

mod api;
mod model;
pub mod prism;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use model::{format_time, subscriber_hash, Member, MergeField};

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The only API key accepted (as the Basic password).
    pub api_key: String,
    /// Requests in flight at once before the fake answers 429 (Mailchimp's is 10).
    pub max_connections: usize,
    /// The share of requests (0 to 1) answered, before doing anything, with a 429 or a
    /// random 500, 502 or 503 (half each).
    pub fault_rate: f64,
    /// How long each answer is held back.
    pub delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            api_key: "0123456789abcdef0123456789abcdef-us21".into(),
            max_connections: 10,
            fault_rate: 0.0,
            delay: Duration::ZERO,
        }
    }
}

/// What the fake has seen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Every request that reached the fake.
    pub requests: u64,
    /// Requests answered 401.
    pub unauthorized: u64,
    /// Requests answered 429 (over the connection limit or injected).
    pub throttled: u64,
    /// Requests answered with an injected 5xx.
    pub faults: u64,
}

/// A running fake. The server stops when the tokio runtime that started it ends.
#[derive(Clone)]
pub struct FakeMailchimp {
    addr: SocketAddr,
    state: Arc<api::Shared>,
}

impl FakeMailchimp {
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

    /// The API root to give a client: `http://127.0.0.1:<port>` (the real one ends in `/3.0`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The API key the fake accepts.
    pub fn api_key(&self) -> String {
        self.state.options.lock().unwrap().api_key.clone()
    }

    /// Changes the behaviour of later requests.
    pub fn set_options(&self, options: Options) {
        *self.state.options.lock().unwrap() = options;
    }

    /// Creates an audience with merge fields given as (tag, name, type, required).
    pub fn create_list(&self, list_id: &str, merge_fields: &[(&str, &str, &str, bool)]) {
        let mut store = self.state.store.lock().unwrap();
        let list = store.lists.entry(list_id.to_owned()).or_default();
        list.merge_fields = merge_fields
            .iter()
            .enumerate()
            .map(|(i, (tag, name, kind, required))| MergeField {
                merge_id: i as u32 + 1,
                tag: (*tag).into(),
                name: (*name).into(),
                kind: (*kind).into(),
                required: *required,
            })
            .collect();
    }

    /// Adds a member directly, as a person signing up through a form would; returns its
    /// subscriber hash. Values are taken as given, without the API's validation.
    pub fn add_member(
        &self,
        list_id: &str,
        email: &str,
        status: &str,
        merge: &[(&str, &str)],
    ) -> String {
        let mut store = self.state.store.lock().unwrap();
        let now = store.tick();
        let web_id = store.next_web_id();
        let list = store.lists.entry(list_id.to_owned()).or_default();
        let member = Member {
            email_address: email.into(),
            status: status.into(),
            merge_fields: merge
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).into())))
                .collect::<BTreeMap<_, _>>(),
            tags: Vec::new(),
            last_changed: now,
            timestamp_signup: now,
            web_id,
        };
        let hash = member.id();
        list.members.push(member);
        hash
    }

    /// Changes a member directly, as the member or a person in Mailchimp's UI would: a new
    /// status (an unsubscribe, say) and merge values. Returns false when there is no such
    /// member.
    pub fn change_member(
        &self,
        list_id: &str,
        email: &str,
        status: Option<&str>,
        merge: &[(&str, &str)],
    ) -> bool {
        let mut store = self.state.store.lock().unwrap();
        let now = store.tick();
        let Some(member) = store
            .lists
            .get_mut(list_id)
            .and_then(|l| l.member_mut(&subscriber_hash(email)))
        else {
            return false;
        };
        if let Some(status) = status {
            member.status = status.into();
        }
        for (k, v) in merge {
            member
                .merge_fields
                .insert((*k).into(), serde_json::Value::String((*v).into()));
        }
        member.last_changed = now;
        true
    }

    /// Sets a member's tags directly (tags are managed in Mailchimp, not by batch subscribe).
    pub fn set_tags(&self, list_id: &str, email: &str, tags: &[&str]) -> bool {
        let mut store = self.state.store.lock().unwrap();
        let now = store.tick();
        let Some(member) = store
            .lists
            .get_mut(list_id)
            .and_then(|l| l.member_mut(&subscriber_hash(email)))
        else {
            return false;
        };
        member.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        member.last_changed = now;
        true
    }

    /// Every member of an audience, archived ones included, in the order they were added.
    pub fn members(&self, list_id: &str) -> Vec<Member> {
        self.state
            .store
            .lock()
            .unwrap()
            .lists
            .get(list_id)
            .map(|l| l.members.clone())
            .unwrap_or_default()
    }

    /// One member by email address.
    pub fn member(&self, list_id: &str, email: &str) -> Option<Member> {
        let hash = subscriber_hash(email);
        self.members(list_id).into_iter().find(|m| m.id() == hash)
    }

    /// What the fake has seen so far.
    pub fn counts(&self) -> Counters {
        *self.state.counters.lock().unwrap()
    }
}

pub(crate) type Locked<T> = Mutex<T>;
