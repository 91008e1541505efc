//! Two-way sync (issue 14) through the binary:
//! - a seeded, model-based randomised test on two pairs of real stores (SQLite ↔ PostgreSQL
//!   with renamed fields on side b, PostgreSQL ↔ MariaDB), every conflict policy in turn: each
//!   round edits both sides directly in SQL (creates, updates, deletes, often of the same
//!   keys), runs the sync, and checks both sides and the conflict history against a model of
//!   what the policy should give; every ~10 rounds a run with no edits must write nothing;
//! - the same on SQLite ↔ PostgreSQL with the run SIGKILLed at a random moment and run again;
//! - the `conflicts list|show|resolve` round trip, with a value set by hand and `--apply`;
//! - two focused cases between SQLite files: a conflict on a base an earlier conflict had is
//!   a new conflict, and a `one_way` field on side b follows side a;
//! - the config rules of two-way syncs;
//! - records side b refuses (a trigger on a SQLite file): kept as pending rejects, retried by
//!   every run (a refused merge without a new conflict), delivered once side b takes them.
//!
//! Reproduce a failure with the seed its message prints: `LOCKSTEP_TWO_WAY_SEED=<seed>`
//! (`LOCKSTEP_TWO_WAY_ROUNDS` sets the rounds of each randomised pair,
//! `LOCKSTEP_TWO_WAY_KILL_ROUNDS` those of the kill test).
//!
//! Time zones: side a's modification times are SQLite text in UTC (`…Z`) or PostgreSQL
//! `timestamptz`; side b's are PostgreSQL `timestamptz` or MariaDB `TIMESTAMP(6)`. A MariaDB
//! TIMESTAMP is an instant stored in UTC and shown in the session's zone; the MySQL connector
//! sets `time_zone = '+00:00'` on its sessions, so what it reads is UTC whatever the server's
//! zone (this test sets the same on its own connection). The newest-wins rounds compare
//! times across the two systems in both orders, so a zone error would show there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lockstep_e2e::{lockstep, mysql_database, postgres_database, run, sqlite_exec};
use serde_json::Value;
use sqlx::{Connection, Row};

// ---------------------------------------------------------------------------------------
// Randomness and knobs.

/// A small PRNG (splitmix64): the same seed gives the same edits.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// `LOCKSTEP_TWO_WAY_SEED`, or the time.
fn seed() -> u64 {
    match std::env::var("LOCKSTEP_TWO_WAY_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("LOCKSTEP_TWO_WAY_SEED={s} is not a number")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{var}={s} is not a number"))
        })
        .unwrap_or(default)
}

/// Rounds of each randomised pair, over the five policies. A round costs one `lockstep run`
/// (a debug build takes 0.2–0.3 s to start, read both sides and commit) plus the checks:
/// 0.4–0.8 s on a 2-core machine running the three randomised tests at once, so the issue's
/// 1,000 rounds take 7–13 minutes per pair. 150 keeps each test near 1–2 minutes; set
/// `LOCKSTEP_TWO_WAY_ROUNDS=1000` for the full run.
const DEFAULT_ROUNDS: usize = 150;
/// Rounds of the kill test, over the five policies (two runs each: the killed one and the
/// rerun).
const DEFAULT_KILL_ROUNDS: usize = 100;
/// A run with no edits, which must write nothing, after every this many rounds.
const IDLE_EVERY: usize = 10;
/// A quarter of the SIGKILLs come within this many ms of the start; the rest in the second
/// half of the time a whole run takes (to 110% of it): a debug build spends its first ~150 ms
/// starting (loading plugins, opening the state store), so kills in 0..=60 ms only ever hit
/// that, and a run writes and commits at its end.
const KILL_MAX_MS: usize = 60;

// ---------------------------------------------------------------------------------------
// Records, policies, the model.

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    email: String,
    name: Option<String>,
}

impl std::fmt::Display for Rec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{{{}, {:?}}}", self.email, self.name)
    }
}

fn show(r: Option<&Rec>) -> String {
    r.map_or("(absent)".to_owned(), Rec::to_string)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    NewestWins,
    PreferA,
    PreferB,
    MergeFields,
    Manual,
}

const POLICIES: [Policy; 5] = [
    Policy::NewestWins,
    Policy::PreferA,
    Policy::PreferB,
    Policy::MergeFields,
    Policy::Manual,
];

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::NewestWins => "newest-wins",
            Policy::PreferA => "prefer-a",
            Policy::PreferB => "prefer-b",
            Policy::MergeFields => "merge-fields",
            Policy::Manual => "manual",
        }
    }
    fn ident(self) -> String {
        self.name().replace('-', "_")
    }
}

/// Column names of one side (for side b, also the mapped names Lockstep compares in).
#[derive(Clone, Copy)]
struct Cols {
    id: &'static str,
    email: &'static str,
    name: &'static str,
    stamp: &'static str,
}

const PLAIN: Cols = Cols {
    id: "id",
    email: "email",
    name: "name",
    stamp: "updated_at",
};

const RENAMED: Cols = Cols {
    id: "contact_id",
    email: "mail",
    name: "full_name",
    stamp: "changed_at",
};

/// A conflict the model expects in the history (`lockstep conflicts list --all`).
#[derive(Clone, Debug, PartialEq)]
struct Expected {
    round: usize,
    /// The run that found it, when known (not in the kill test).
    run: Option<i64>,
    key: i64,
    base: Option<Rec>,
    a: Option<Rec>,
    b: Option<Rec>,
    /// The mapped fields that differ.
    fields: BTreeSet<String>,
    decision: String,
    resolution: Option<Rec>,
    deletes: bool,
    status: &'static str,
    id: Option<i64>,
}

/// What the model says happens to one key in a run.
enum Outcome {
    Nothing,
    /// Both sides (and the base) end with this (`None`: deleted on both).
    Sync(Option<Rec>),
    /// A conflict: `decided` is `None` when queued for a person.
    Conflict {
        decided: Option<Option<Rec>>,
        decision: String,
        fields: BTreeSet<String>,
    },
}

/// Counts of what the rounds covered, for the summary.
#[derive(Default, Debug)]
struct Coverage {
    one_sided: usize,
    agreements: usize,
    conflicts: usize,
    delete_vs_update: usize,
    created_on_both: usize,
    merged: usize,
    queued: usize,
    resolved_by_hand: usize,
    idle_runs: usize,
}

#[derive(Default)]
struct Model {
    a: BTreeMap<i64, Rec>,
    b: BTreeMap<i64, Rec>,
    base: BTreeMap<i64, Rec>,
    /// Keys whose conflict waits for a person → index in `history`.
    open: BTreeMap<i64, usize>,
    /// Keys a person decided, not yet applied → (resolution, index in `history`).
    resolved: BTreeMap<i64, (Option<Rec>, usize)>,
    history: Vec<Expected>,
    next_id: i64,
}

impl Model {
    fn side(&self, side: Side) -> &BTreeMap<i64, Rec> {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    fn side_mut(&mut self, side: Side) -> &mut BTreeMap<i64, Rec> {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    fn locked(&self) -> BTreeSet<i64> {
        self.open
            .keys()
            .chain(self.resolved.keys())
            .copied()
            .collect()
    }

    fn set_all(&mut self, key: i64, value: Option<Rec>) {
        for map in [&mut self.a, &mut self.b, &mut self.base] {
            match &value {
                Some(v) => {
                    map.insert(key, v.clone());
                }
                None => {
                    map.remove(&key);
                }
            }
        }
    }

    /// What a run does, by the semantics: applies it to the model and returns how many
    /// conflicts it finds. `later` is the side whose edits came last in the round.
    fn run(
        &mut self,
        round: usize,
        policy: Policy,
        fallback: Policy,
        later: Side,
        mapped: Cols,
        cov: &mut Coverage,
    ) -> usize {
        let keys: BTreeSet<i64> = self
            .a
            .keys()
            .chain(self.b.keys())
            .chain(self.base.keys())
            .chain(self.resolved.keys())
            .copied()
            .collect();
        let mut found = 0;
        for key in keys {
            if let Some((resolution, i)) = self.resolved.remove(&key) {
                self.set_all(key, resolution);
                self.history[i].status = "applied";
                continue;
            }
            if self.open.contains_key(&key) {
                continue;
            }
            let (base, a, b) = (self.base.get(&key), self.a.get(&key), self.b.get(&key));
            match decide(policy, fallback, later, base, a, b, mapped) {
                Outcome::Nothing => {}
                Outcome::Sync(v) => {
                    if a == b {
                        cov.agreements += 1;
                    } else {
                        cov.one_sided += 1;
                    }
                    self.set_all(key, v);
                }
                Outcome::Conflict {
                    decided,
                    decision,
                    fields,
                } => {
                    found += 1;
                    cov.conflicts += 1;
                    if a.is_none() || b.is_none() {
                        cov.delete_vs_update += 1;
                    }
                    if base.is_none() {
                        cov.created_on_both += 1;
                    }
                    if decision == "merge" {
                        cov.merged += 1;
                    }
                    let expected = Expected {
                        round,
                        run: None,
                        key,
                        base: base.cloned(),
                        a: a.cloned(),
                        b: b.cloned(),
                        fields,
                        decision,
                        resolution: decided.clone().flatten(),
                        deletes: matches!(decided, Some(None)),
                        status: if decided.is_some() { "auto" } else { "open" },
                        id: None,
                    };
                    self.history.push(expected);
                    match decided {
                        Some(v) => self.set_all(key, v),
                        None => {
                            cov.queued += 1;
                            self.open.insert(key, self.history.len() - 1);
                        }
                    }
                }
            }
        }
        found
    }
}

/// The semantics of one key: each side now against the base.
fn decide(
    policy: Policy,
    fallback: Policy,
    later: Side,
    base: Option<&Rec>,
    a: Option<&Rec>,
    b: Option<&Rec>,
    mapped: Cols,
) -> Outcome {
    let (ca, cb) = (a != base, b != base);
    if !ca && !cb {
        return Outcome::Nothing;
    }
    if !cb || a == b {
        return Outcome::Sync(a.cloned());
    }
    if !ca {
        return Outcome::Sync(b.cloned());
    }
    let side_of = |p: Policy| match p {
        Policy::PreferA => Side::A,
        Policy::PreferB => Side::B,
        other => panic!("the test's fallback is prefer-a or prefer-b, not {other:?}"),
    };
    let (ra, rb) = match (a, b) {
        (Some(ra), Some(rb)) => (ra, rb),
        _ => {
            // A delete against an update.
            let updated = if a.is_some() { Side::A } else { Side::B };
            let fields = [mapped.id, mapped.email, mapped.name]
                .map(str::to_owned)
                .into();
            let keep = match policy {
                Policy::Manual => None,
                Policy::NewestWins => Some(true),
                Policy::MergeFields => Some(side_of(fallback) == updated),
                p => Some(side_of(p) == updated),
            };
            return match keep {
                None => Outcome::Conflict {
                    decided: None,
                    decision: "queued".into(),
                    fields,
                },
                Some(true) => Outcome::Conflict {
                    decided: Some(a.or(b).cloned()),
                    decision: updated.name().into(),
                    fields,
                },
                Some(false) => Outcome::Conflict {
                    decided: Some(None),
                    decision: "delete".into(),
                    fields,
                },
            };
        }
    };
    let mut fields = BTreeSet::new();
    let mut merged = ra.clone();
    let (mut took_a, mut took_b) = (false, false);
    let email_differs = ra.email != rb.email;
    let name_differs = ra.name != rb.name;
    for (field, differs) in [(mapped.email, email_differs), (mapped.name, name_differs)] {
        if !differs {
            continue;
        }
        fields.insert(field.to_owned());
        let is_email = field == mapped.email;
        let changed_on = |r: &Rec| match base {
            None => true,
            Some(base) if is_email => base.email != r.email,
            Some(base) => base.name != r.name,
        };
        let side = match policy {
            Policy::Manual => {
                return Outcome::Conflict {
                    decided: None,
                    decision: "queued".into(),
                    fields: [mapped.email, mapped.name]
                        .into_iter()
                        .filter(|f| {
                            if *f == mapped.email {
                                email_differs
                            } else {
                                name_differs
                            }
                        })
                        .map(str::to_owned)
                        .collect(),
                };
            }
            Policy::NewestWins => later,
            Policy::MergeFields => match (changed_on(ra), changed_on(rb)) {
                (true, false) => Side::A,
                (false, true) => Side::B,
                _ => side_of(fallback),
            },
            p => side_of(p),
        };
        match side {
            Side::A => took_a = true,
            Side::B => {
                took_b = true;
                if is_email {
                    merged.email = rb.email.clone();
                } else {
                    merged.name = rb.name.clone();
                }
            }
        }
    }
    let decision = match (took_a, took_b) {
        (_, false) => "a",
        (false, true) => "b",
        (true, true) => "merge",
    };
    Outcome::Conflict {
        decided: Some(Some(merged)),
        decision: decision.into(),
        fields,
    }
}

// ---------------------------------------------------------------------------------------
// Edits.

const NAMES: [Option<&str>; 7] = [
    Some("Ann Lee"),
    Some("Bob Ray"),
    Some("Zoë Quinn"),
    Some("Seán O'Brien"),
    Some("李雷"),
    Some("  padded  "),
    None,
];

fn random_email(rng: &mut Rng) -> String {
    format!(
        "{}{}@example.{}",
        rng.pick(&["ann", "bob", "zoe"]),
        rng.below(3),
        rng.pick(&["com", "org"])
    )
}

fn random_name(rng: &mut Rng) -> Option<String> {
    rng.pick(&NAMES).map(str::to_owned)
}

fn random_rec(rng: &mut Rng) -> Rec {
    Rec {
        email: random_email(rng),
        name: random_name(rng),
    }
}

/// An update of `rec`: its email, its name, or both (possibly to the values it has).
fn random_update(rng: &mut Rng, rec: &Rec) -> Rec {
    let mut new = rec.clone();
    match rng.below(100) {
        0..=39 => new.email = random_email(rng),
        40..=74 => new.name = random_name(rng),
        _ => new = random_rec(rng),
    }
    new
}

#[derive(Clone, Debug)]
enum Op {
    Insert(Rec),
    Update(Rec),
    Delete,
}

#[derive(Clone, Debug)]
struct Edit {
    side: Side,
    key: i64,
    op: Op,
}

impl std::fmt::Display for Edit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.op {
            Op::Insert(r) => write!(f, "{}: insert {} {r}", self.side.name(), self.key),
            Op::Update(r) => write!(f, "{}: update {} to {r}", self.side.name(), self.key),
            Op::Delete => write!(f, "{}: delete {}", self.side.name(), self.key),
        }
    }
}

/// Plans one round's edits of both sides and applies them to the model's sides. Keys with a
/// conflict that waits for a person, or for its decision to be applied, are left alone.
fn plan_round(rng: &mut Rng, m: &mut Model, first_round: bool) -> Vec<Edit> {
    let mut edits = Vec::new();
    let mut push = |m: &mut Model, side: Side, key: i64, op: Op| {
        let map = m.side_mut(side);
        match &op {
            Op::Insert(r) | Op::Update(r) => {
                map.insert(key, r.clone());
            }
            Op::Delete => {
                map.remove(&key);
            }
        }
        edits.push(Edit { side, key, op });
    };
    if first_round {
        for _ in 0..12 {
            m.next_id += 1;
            push(m, Side::A, m.next_id, Op::Insert(random_rec(rng)));
        }
        for _ in 0..4 {
            m.next_id += 1;
            push(m, Side::B, m.next_id, Op::Insert(random_rec(rng)));
        }
        return edits;
    }
    let locked = m.locked();
    // A key to create: sometimes one both sides had deleted, mostly a new one.
    let new_key = |rng: &mut Rng, m: &mut Model| {
        let gone: Vec<i64> = (1..=m.next_id)
            .filter(|k| !m.a.contains_key(k) && !m.b.contains_key(k) && !locked.contains(k))
            .collect();
        if !gone.is_empty() && rng.chance(30) {
            *rng.pick(&gone)
        } else {
            m.next_id += 1;
            m.next_id
        }
    };
    // The same keys edited on both sides: conflicts, agreements, delete against update.
    let shared: Vec<i64> =
        m.a.keys()
            .filter(|k| m.b.contains_key(k) && !locked.contains(k))
            .copied()
            .collect();
    if !shared.is_empty() && rng.chance(70) {
        for _ in 0..1 + rng.below(4) {
            let key = *rng.pick(&shared);
            let mut op_a: Option<Op> = None;
            for side in [Side::A, Side::B] {
                let Some(current) = m.side(side).get(&key).cloned() else {
                    continue;
                };
                let op = match (&op_a, side) {
                    (Some(same), Side::B) if rng.chance(20) => same.clone(),
                    _ if rng.chance(20) => Op::Delete,
                    _ => Op::Update(random_update(rng, &current)),
                };
                if side == Side::A {
                    op_a = Some(op.clone());
                }
                push(m, side, key, op);
            }
        }
    }
    // A record created on both sides, with the same values or not.
    if rng.chance(25) {
        let key = new_key(rng, m);
        let rec_a = random_rec(rng);
        let rec_b = if rng.chance(30) {
            rec_a.clone()
        } else {
            random_rec(rng)
        };
        push(m, Side::A, key, Op::Insert(rec_a));
        push(m, Side::B, key, Op::Insert(rec_b));
    }
    // A few edits of each side on its own.
    for side in [Side::A, Side::B] {
        let size = m.side(side).len();
        for _ in 0..rng.below(5) {
            let mine: Vec<i64> = m
                .side(side)
                .keys()
                .filter(|k| !locked.contains(k))
                .copied()
                .collect();
            let roll = if size > 40 { 80 } else { rng.below(100) };
            if mine.is_empty() || roll < 30 {
                let key = new_key(rng, m);
                if m.side(side).contains_key(&key) {
                    continue;
                }
                push(m, side, key, Op::Insert(random_rec(rng)));
            } else if roll < 75 {
                let key = *rng.pick(&mine);
                let rec = random_update(rng, &m.side(side)[&key]);
                push(m, side, key, Op::Update(rec));
            } else {
                let key = *rng.pick(&mine);
                push(m, side, key, Op::Delete);
            }
        }
    }
    edits
}

// ---------------------------------------------------------------------------------------
// The stores.

enum Db {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
    Maria(sqlx::MySqlConnection),
}

/// One side: the test's own connection (to edit and read it) and how Lockstep reaches it.
struct Store {
    db: Db,
    /// `connector = …` and `config = …` of its `[connections.NAME]` table.
    connection: String,
    cols: Cols,
    label: &'static str,
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn literal(value: Option<&str>) -> String {
    value.map_or("NULL".to_owned(), quote)
}

impl Store {
    async fn sqlite(path: &Path, cols: Cols) -> Store {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        let conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        Store {
            db: Db::Sqlite(conn),
            connection: format!(
                "connector = \"sqlite\"\nconfig = {{ path = \"{}\" }}\n",
                path.display()
            ),
            cols,
            label: "SQLite",
        }
    }

    async fn postgres(url: &str, cols: Cols) -> Store {
        let conn = sqlx::PgConnection::connect(url).await.unwrap();
        Store {
            db: Db::Postgres(conn),
            connection: format!("connector = \"postgres\"\nconfig = {{ url = \"{url}\" }}\n"),
            cols,
            label: "PostgreSQL",
        }
    }

    async fn mariadb(url: &str, cols: Cols) -> Store {
        let mut conn = sqlx::MySqlConnection::connect(url).await.unwrap();
        sqlx::raw_sql("SET time_zone = '+00:00'")
            .execute(&mut conn)
            .await
            .unwrap();
        let zones = sqlx::query("SELECT @@global.time_zone, @@system_time_zone")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        eprintln!(
            "MariaDB: global time_zone {}, system time zone {}; this test's session and the \
             connector's use +00:00",
            zones.get::<String, _>(0),
            zones.get::<String, _>(1)
        );
        Store {
            db: Db::Maria(conn),
            connection: format!("connector = \"mysql\"\nconfig = {{ url = \"{url}\" }}\n"),
            cols,
            label: "MariaDB",
        }
    }

    async fn exec(&mut self, sql: &str) {
        let result = match &mut self.db {
            Db::Sqlite(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
            Db::Postgres(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
            Db::Maria(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
        };
        result.unwrap_or_else(|e| panic!("{}: {sql}: {e}", self.label));
    }

    /// A table `t` with a modification time its system keeps.
    async fn create_table(&mut self, t: &str) {
        let Cols {
            id,
            email,
            name,
            stamp,
        } = self.cols;
        let statements = match self.db {
            Db::Sqlite(_) => vec![
                format!(
                    "CREATE TABLE {t} ({id} INTEGER PRIMARY KEY, {email} TEXT, {name} TEXT, \
                     {stamp} TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
                ),
                format!(
                    "CREATE TRIGGER {t}_touch AFTER UPDATE ON {t} FOR EACH ROW \
                     WHEN NEW.{stamp} = OLD.{stamp} BEGIN UPDATE {t} SET {stamp} = \
                     strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE {id} = NEW.{id}; END"
                ),
            ],
            Db::Postgres(_) => vec![
                format!(
                    "CREATE TABLE {t} ({id} BIGINT PRIMARY KEY, {email} TEXT, {name} TEXT, \
                     {stamp} TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())"
                ),
                format!(
                    "CREATE FUNCTION {t}_touch() RETURNS trigger LANGUAGE plpgsql AS \
                     $$ BEGIN NEW.{stamp} := clock_timestamp(); RETURN NEW; END $$"
                ),
                format!(
                    "CREATE TRIGGER {t}_touch BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW \
                     EXECUTE FUNCTION {t}_touch()"
                ),
            ],
            Db::Maria(_) => vec![format!(
                "CREATE TABLE {t} ({id} BIGINT PRIMARY KEY, {email} TEXT, {name} TEXT, \
                 {stamp} TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) \
                 ON UPDATE CURRENT_TIMESTAMP(6)) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"
            )],
        };
        for s in statements {
            self.exec(&s).await;
        }
    }

    async fn apply(&mut self, t: &str, edit: &Edit) {
        let Cols {
            id, email, name, ..
        } = self.cols;
        let key = edit.key;
        let sql = match &edit.op {
            Op::Insert(r) => format!(
                "INSERT INTO {t} ({id}, {email}, {name}) VALUES ({key}, {}, {})",
                quote(&r.email),
                literal(r.name.as_deref())
            ),
            Op::Update(r) => format!(
                "UPDATE {t} SET {email} = {}, {name} = {} WHERE {id} = {key}",
                quote(&r.email),
                literal(r.name.as_deref())
            ),
            Op::Delete => format!("DELETE FROM {t} WHERE {id} = {key}"),
        };
        self.exec(&sql).await;
    }

    /// Every record of `t`.
    async fn rows(&mut self, t: &str) -> BTreeMap<i64, Rec> {
        let Cols {
            id, email, name, ..
        } = self.cols;
        let rows = match &mut self.db {
            Db::Sqlite(c) => {
                let q = format!("SELECT {id}, {email}, {name} FROM {t}");
                sqlx::query(&q).fetch_all(c).await.map(|rows| {
                    rows.iter()
                        .map(|r| (r.get(0), r.get(1), r.get(2)))
                        .collect::<Vec<(i64, Option<String>, Option<String>)>>()
                })
            }
            Db::Postgres(c) => {
                let q = format!("SELECT {id}::bigint, {email}, {name} FROM {t}");
                sqlx::query(&q).fetch_all(c).await.map(|rows| {
                    rows.iter()
                        .map(|r| (r.get(0), r.get(1), r.get(2)))
                        .collect()
                })
            }
            Db::Maria(c) => {
                let q = format!(
                    "SELECT CAST({id} AS SIGNED), CONVERT({email} USING utf8mb4), \
                     CONVERT({name} USING utf8mb4) FROM {t}"
                );
                sqlx::query(&q).fetch_all(c).await.map(|rows| {
                    rows.iter()
                        .map(|r| (r.get(0), r.get(1), r.get(2)))
                        .collect()
                })
            }
        }
        .unwrap_or_else(|e| panic!("{}: reading {t}: {e}", self.label));
        rows.into_iter()
            .map(|(k, e, n)| {
                (
                    k,
                    Rec {
                        email: e.unwrap_or_else(|| "<NULL>".into()),
                        name: n,
                    },
                )
            })
            .collect()
    }

    /// Every record's key and modification time, as text: a run that writes nothing leaves
    /// them as they were.
    async fn stamps(&mut self, t: &str) -> Vec<(i64, String)> {
        let Cols { id, stamp, .. } = self.cols;
        let q = match self.db {
            Db::Sqlite(_) => format!("SELECT {id}, {stamp} FROM {t} ORDER BY 1"),
            Db::Postgres(_) => format!("SELECT {id}::bigint, {stamp}::text FROM {t} ORDER BY 1"),
            Db::Maria(_) => format!(
                "SELECT CAST({id} AS SIGNED), DATE_FORMAT({stamp}, '%Y-%m-%d %H:%i:%s.%f') \
                 FROM {t} ORDER BY 1"
            ),
        };
        let rows = match &mut self.db {
            Db::Sqlite(c) => sqlx::query(&q)
                .fetch_all(c)
                .await
                .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect()),
            Db::Postgres(c) => sqlx::query(&q)
                .fetch_all(c)
                .await
                .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect()),
            Db::Maria(c) => sqlx::query(&q)
                .fetch_all(c)
                .await
                .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect()),
        };
        rows.unwrap_or_else(|e| panic!("{}: {q}: {e}", self.label))
    }
}

// ---------------------------------------------------------------------------------------
// Running lockstep.

/// `lockstep run SYNC -o json`: (exit code, report, stderr).
fn run_sync(dir: &Path, sync: &str) -> (i32, Value, String) {
    let (out, stdout, stderr) = run(lockstep(dir).args(["run", sync, "-o", "json"]));
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("run {sync}: not JSON ({e}): {stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), report, stderr)
}

fn metric(report: &Value, name: &str) -> u64 {
    report["metrics"][name].as_u64().unwrap_or(0)
}

/// `lockstep conflicts list SYNC --all --limit 0 -o json`.
fn list_conflicts(dir: &Path, sync: &str) -> Vec<Value> {
    let (out, stdout, stderr) = run(lockstep(dir).args([
        "conflicts",
        "list",
        sync,
        "--all",
        "--limit",
        "0",
        "-o",
        "json",
    ]));
    assert!(out.status.success(), "conflicts list: {stdout}\n{stderr}");
    serde_json::from_str::<Value>(&stdout)
        .unwrap_or_else(|e| panic!("conflicts list: not JSON ({e}): {stdout}"))
        .as_array()
        .cloned()
        .unwrap()
}

/// A record in a conflict's JSON (mapped names).
fn rec_of(value: &Value, mapped: Cols) -> Option<Rec> {
    let map = value.as_object()?;
    Some(Rec {
        email: map
            .get(mapped.email)
            .and_then(Value::as_str)
            .unwrap_or("<not text>")
            .to_owned(),
        name: map
            .get(mapped.name)
            .and_then(|v| v.as_str().map(str::to_owned)),
    })
}

fn key_of(conflict: &Value) -> i64 {
    let key = conflict["key"].as_str().unwrap();
    let parts: Vec<i64> = serde_json::from_str(key).unwrap_or_else(|e| panic!("key {key}: {e}"));
    parts[0]
}

/// A conflict's JSON in the model's terms.
fn actual(conflict: &Value, mapped: Cols) -> Expected {
    Expected {
        round: 0,
        run: conflict["run"].as_i64(),
        key: key_of(conflict),
        base: rec_of(&conflict["base"], mapped),
        a: rec_of(&conflict["a"], mapped),
        b: rec_of(&conflict["b"], mapped),
        fields: conflict["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_owned())
            .collect(),
        decision: conflict["decision"].as_str().unwrap().to_owned(),
        resolution: rec_of(&conflict["resolution"], mapped),
        deletes: conflict["resolution_deletes"].as_bool().unwrap(),
        status: match conflict["status"].as_str().unwrap() {
            "open" => "open",
            "resolved" => "resolved",
            "applied" => "applied",
            "auto" => "auto",
            other => panic!("unknown status {other}"),
        },
        id: conflict["id"].as_i64(),
    }
}

// ---------------------------------------------------------------------------------------
// The randomised scenario.

/// Two stores and the directory the sync's config and state live in.
struct Pair {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    a: Store,
    b: Store,
    label: &'static str,
    seed: u64,
    /// How long the last complete run took, from spawn to exit: the kill test's delays
    /// spread over it.
    run_ms: u64,
}

/// What a kill did to a run.
#[derive(Default, Debug)]
struct Kills {
    /// The run had finished before the kill.
    finished: usize,
    /// Killed before it changed either side.
    before_writes: usize,
    /// Killed after it changed a side (before or after its commit).
    after_writes: usize,
}

impl Pair {
    fn new(
        label: &'static str,
        seed: u64,
        make: impl FnOnce(&Path, &tokio::runtime::Runtime) -> (Store, Store),
    ) -> Pair {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = make(dir.path(), &rt);
        Pair {
            rt,
            dir,
            a,
            b,
            label,
            seed,
            run_ms: 300,
        }
    }

    fn config(&self, sync: &str, table: &str, policy: Policy, fallback: Policy) {
        let (ca, cb) = (self.a.cols, self.b.cols);
        let text = format!(
            "[state]\nurl = \"sqlite://state.db\"\n\n\
             [connections.a]\n{}\n[connections.b]\n{}\n\
             [syncs.{sync}]\nsource = \"a.{table}\"\ndestination = \"b.{table}\"\n\
             mode = \"two-way\"\ncursor = \"{}\"\nkey = [\"{}\"]\nmax_delete_fraction = 1.0\n\n\
             [syncs.{sync}.fields]\n{} = \"{}\"\n{} = \"{}\"\n{} = \"{}\"\n\n\
             [syncs.{sync}.two_way]\npolicy = \"{}\"\nfallback = \"{}\"\nb_cursor = \"{}\"\n",
            self.a.connection,
            self.b.connection,
            ca.stamp,
            cb.id,
            cb.id,
            ca.id,
            cb.email,
            ca.email,
            cb.name,
            ca.name,
            policy.name(),
            fallback.name(),
            cb.stamp,
        );
        std::fs::write(self.dir.path().join("lockstep.toml"), text).unwrap();
    }

    fn apply(&mut self, table: &str, edits: &[Edit], side: Side) {
        let store = match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        };
        self.rt.block_on(async {
            for e in edits.iter().filter(|e| e.side == side) {
                store.apply(table, e).await;
            }
        });
    }

    fn rows(&mut self, table: &str) -> [BTreeMap<i64, Rec>; 2] {
        let (a, b) = (&mut self.a, &mut self.b);
        self.rt
            .block_on(async { [a.rows(table).await, b.rows(table).await] })
    }

    fn stamps(&mut self, table: &str) -> [Vec<(i64, String)>; 2] {
        let (a, b) = (&mut self.a, &mut self.b);
        self.rt
            .block_on(async { [a.stamps(table).await, b.stamps(table).await] })
    }

    /// Both sides equal the model.
    fn check_sides(&mut self, table: &str, model: &Model, ctx: &str) {
        let [a, b] = self.rows(table);
        for (side, got, want) in [("a", &a, &model.a), ("b", &b, &model.b)] {
            if got == want {
                continue;
            }
            let keys: BTreeSet<&i64> = got.keys().chain(want.keys()).collect();
            let diffs: Vec<String> = keys
                .into_iter()
                .filter(|k| got.get(k) != want.get(k))
                .map(|k| {
                    format!(
                        "  key {k}: expected {}, found {} (base {}, a {}, b {}{})",
                        show(want.get(k)),
                        show(got.get(k)),
                        show(model.base.get(k)),
                        show(model.a.get(k)),
                        show(model.b.get(k)),
                        if model.open.contains_key(k) {
                            ", conflict open"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            panic!(
                "{ctx}: side {side} ({}) differs from the model:\n{}",
                if side == "a" {
                    self.a.label
                } else {
                    self.b.label
                },
                diffs.join("\n")
            );
        }
    }

    /// The sync's conflict history equals the model's: each conflict recorded once, with
    /// the sides' values, the decision and its status.
    fn check_conflicts(&mut self, sync: &str, model: &mut Model, mapped: Cols, ctx: &str) {
        let mut got: Vec<Expected> = list_conflicts(self.dir.path(), sync)
            .iter()
            .map(|c| actual(c, mapped))
            .collect();
        got.sort_by_key(|c| c.id);
        let mut want: Vec<(usize, Expected)> = model.history.iter().cloned().enumerate().collect();
        want.sort_by_key(|(_, c)| (c.round, c.key));
        let describe = |c: &Expected| {
            format!(
                "key {} (run {:?}, id {:?}): base {}, a {}, b {}, fields {:?}, decision {}, \
                 resolution {}{}, status {}",
                c.key,
                c.run,
                c.id,
                show(c.base.as_ref()),
                show(c.a.as_ref()),
                show(c.b.as_ref()),
                c.fields,
                c.decision,
                show(c.resolution.as_ref()),
                if c.deletes { " (deletes)" } else { "" },
                c.status
            )
        };
        // What a conflict records is what the people left on each side: after a crash, the
        // rerun must not record Lockstep's own partial writes as a side's values.
        let same = |w: &Expected, g: &Expected| {
            w.key == g.key
                && (w.run.is_none() || w.run == g.run)
                && w.base == g.base
                && w.a == g.a
                && w.b == g.b
                && w.fields == g.fields
                && w.decision == g.decision
                && w.resolution == g.resolution
                && w.deletes == g.deletes
                && w.status == g.status
                && (w.id.is_none() || w.id == g.id)
        };
        // Per key, the recorded conflicts in the order they were stored against the model's
        // in the order they happened.
        let mut got_by_key: BTreeMap<i64, Vec<&Expected>> = BTreeMap::new();
        for g in &got {
            got_by_key.entry(g.key).or_default().push(g);
        }
        let mut want_by_key: BTreeMap<i64, Vec<&(usize, Expected)>> = BTreeMap::new();
        for w in &want {
            want_by_key.entry(w.1.key).or_default().push(w);
        }
        let matches = got_by_key.len() == want_by_key.len()
            && want_by_key.iter().all(|(key, ws)| {
                got_by_key.get(key).is_some_and(|gs| {
                    gs.len() == ws.len() && ws.iter().zip(gs).all(|((_, w), g)| same(w, g))
                })
            });
        if !matches {
            panic!(
                "{ctx}: the conflict history differs from the model ({} recorded, {} \
                 expected)\nexpected:\n{}\nrecorded:\n{}",
                got.len(),
                want.len(),
                want.iter()
                    .map(|(_, c)| format!("  round {}: {}", c.round, describe(c)))
                    .collect::<Vec<_>>()
                    .join("\n"),
                got.iter()
                    .map(|c| format!("  {}", describe(c)))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        for (key, ws) in &want_by_key {
            for ((i, _), g) in ws.iter().zip(&got_by_key[key]) {
                model.history[*i].id = g.id;
            }
        }
    }

    /// A run with no edits writes nothing and finds no conflict.
    fn check_idle(&mut self, sync: &str, table: &str, ctx: &str) {
        let before = self.stamps(table);
        let (code, report, stderr) = run_sync(self.dir.path(), sync);
        assert_eq!(
            code, 0,
            "{ctx}: the run with no edits failed: {report}\n{stderr}"
        );
        let written =
            metric(&report, "added") + metric(&report, "updated") + metric(&report, "deleted");
        assert_eq!(
            (written, metric(&report, "conflicts")),
            (0, 0),
            "{ctx}: a run with no edits must write nothing and find no conflict: {report}"
        );
        let after = self.stamps(table);
        for (side, b, a) in [("a", &before[0], &after[0]), ("b", &before[1], &after[1])] {
            if b != a {
                let changed: Vec<String> = a
                    .iter()
                    .filter(|r| !b.contains(r))
                    .map(|(k, t)| format!("{k} at {t}"))
                    .collect();
                panic!(
                    "{ctx}: a run with no edits wrote side {side} (records touched: {})",
                    changed.join(", ")
                );
            }
        }
    }

    /// Runs the sync, SIGKILLed after a random delay, and says what the kill hit: the run
    /// had `finished`, or was killed `before-writes` (neither side changed yet) or
    /// `after-writes`.
    fn killed_run(
        &mut self,
        sync: &str,
        table: &str,
        model_before: &[BTreeMap<i64, Rec>; 2],
        rng: &mut Rng,
    ) -> &'static str {
        // Most kills aim at the second half of the run, where it writes and commits.
        let run_ms = self.run_ms as usize;
        let delay = if rng.chance(25) {
            rng.below(KILL_MAX_MS + 1)
        } else {
            run_ms / 2 + rng.below(run_ms * 3 / 5 + 1)
        };
        // Chunks of two keys, so that a kill lands between a run's chunk commits too.
        let mut child = lockstep(self.dir.path())
            .args(["run", sync, "-o", "json"])
            .env("LOCKSTEP_TWO_WAY_CHUNK", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay as u64));
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            child.kill().unwrap();
        }
        child.wait().unwrap();
        if finished {
            return "finished";
        }
        if self.rows(table) == *model_before {
            "before-writes"
        } else {
            "after-writes"
        }
    }

    /// One policy's rounds, on fresh tables and a fresh sync; returns the coverage.
    fn policy_rounds(
        &mut self,
        rng: &mut Rng,
        policy: Policy,
        rounds: usize,
        kill: Option<&mut Kills>,
    ) -> Coverage {
        let mut kill = kill;
        let fallback = if rng.chance(50) {
            Policy::PreferA
        } else {
            Policy::PreferB
        };
        let table = format!("t_{}", policy.ident());
        let sync = format!("s_{}", policy.ident());
        let mapped = self.b.cols;
        {
            let (a, b) = (&mut self.a, &mut self.b);
            self.rt.block_on(async {
                a.create_table(&table).await;
                b.create_table(&table).await;
            });
        }
        self.config(&sync, &table, policy, fallback);
        let mut model = Model::default();
        let mut cov = Coverage::default();
        let seed = self.seed;
        let label = self.label;
        for round in 0..=rounds {
            // The last round only resolves what is still open, and checks.
            let last = round == rounds;
            let edits = if last {
                Vec::new()
            } else {
                plan_round(rng, &mut model, round == 0)
            };
            let first = if round % 2 == 0 { Side::A } else { Side::B };
            self.apply(&table, &edits, first);
            std::thread::sleep(Duration::from_millis(5));
            self.apply(&table, &edits, first.other());
            let later = first.other();
            let ctx = format!(
                "LOCKSTEP_TWO_WAY_SEED={seed}: {label}, policy {} (fallback {}), round {round}; \
                 this round's edits, side {} first:\n  {}\n",
                policy.name(),
                fallback.name(),
                first.name(),
                edits
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n  ")
            );
            let before = [model.a.clone(), model.b.clone()];
            let found = model.run(round, policy, fallback, later, mapped, &mut cov);
            if let Some(kills) = kill.as_deref_mut() {
                match self.killed_run(&sync, &table, &before, rng) {
                    "finished" => kills.finished += 1,
                    "before-writes" => kills.before_writes += 1,
                    _ => kills.after_writes += 1,
                }
            }
            let started = Instant::now();
            let (code, report, stderr) = run_sync(self.dir.path(), &sync);
            self.run_ms = started.elapsed().as_millis() as u64;
            assert_eq!(code, 0, "{ctx}the run failed: {report}\n{stderr}");
            if kill.is_none() {
                assert_eq!(
                    metric(&report, "conflicts"),
                    found as u64,
                    "{ctx}the run's conflicts metric: {report}"
                );
                let run_id = report["run"].as_i64();
                for c in model.history.iter_mut().filter(|c| c.round == round) {
                    c.run = run_id;
                }
            }
            self.check_sides(&table, &model, &ctx);
            self.check_conflicts(&sync, &mut model, mapped, &ctx);
            if round % IDLE_EVERY == IDLE_EVERY - 1 || last {
                self.check_idle(&sync, &table, &ctx);
                cov.idle_runs += 1;
                self.check_sides(&table, &model, &ctx);
            }
            if policy == Policy::Manual {
                self.resolve_some(rng, &mut model, mapped, last, &mut cov, &ctx);
                if last {
                    // Apply the last decisions, then nothing is left to do.
                    let (code, report, stderr) = run_sync(self.dir.path(), &sync);
                    assert_eq!(code, 0, "{ctx}the run failed: {report}\n{stderr}");
                    let applied: Vec<i64> = model.resolved.keys().copied().collect();
                    for key in applied {
                        let (resolution, i) = model.resolved.remove(&key).unwrap();
                        model.set_all(key, resolution);
                        model.history[i].status = "applied";
                    }
                    self.check_sides(&table, &model, &ctx);
                    self.check_conflicts(&sync, &mut model, mapped, &ctx);
                    self.check_idle(&sync, &table, &ctx);
                    cov.idle_runs += 1;
                }
            }
        }
        assert!(model.open.is_empty() && model.resolved.is_empty());
        cov
    }

    /// Resolves open conflicts with `--take a|b` or `--set` (all of them when `all`, else
    /// most), checking what `conflicts resolve -o json` stored.
    #[allow(clippy::too_many_arguments)]
    fn resolve_some(
        &mut self,
        rng: &mut Rng,
        model: &mut Model,
        mapped: Cols,
        all: bool,
        cov: &mut Coverage,
        ctx: &str,
    ) {
        let open: Vec<(i64, usize)> = model.open.iter().map(|(k, i)| (*k, *i)).collect();
        for (key, i) in open {
            if !all && rng.chance(25) {
                continue; // stays open for another round
            }
            let c = model.history[i].clone();
            let id = c.id.expect("an open conflict's id is known once listed");
            let mut args: Vec<String> = ["conflicts", "resolve", &id.to_string(), "-o", "json"]
                .map(str::to_owned)
                .into();
            let (decision, resolution) = match rng.below(4) {
                0 => {
                    args.extend(["--take".into(), "a".into()]);
                    ("take a", c.a.clone())
                }
                1 => {
                    args.extend(["--take".into(), "b".into()]);
                    ("take b", c.b.clone())
                }
                2 => {
                    // A name set by hand, on top of side b's values (side a's when b
                    // deleted the record), as JSON or as plain text.
                    let name = if rng.chance(15) {
                        None
                    } else {
                        Some(format!(
                            "Hand {} {}",
                            rng.pick(&["Zoë", "Ó'Neil", "Li"]),
                            rng.below(100)
                        ))
                    };
                    let text = match &name {
                        None => "null".to_owned(),
                        Some(n) if rng.chance(50) => serde_json::to_string(n).unwrap(),
                        Some(n) => n.clone(),
                    };
                    args.extend(["--set".into(), format!("{}={text}", mapped.name)]);
                    let mut values = c.b.clone().or_else(|| c.a.clone()).unwrap();
                    values.name = name;
                    ("set", Some(values))
                }
                _ => match c.a.clone() {
                    Some(mut values) => {
                        let email = random_email(rng);
                        args.extend([
                            "--take".into(),
                            "a".into(),
                            "--set".into(),
                            format!("{}=\"{email}\"", mapped.email),
                        ]);
                        values.email = email;
                        ("set", Some(values))
                    }
                    None => {
                        args.extend(["--take".into(), "b".into()]);
                        ("take b", c.b.clone())
                    }
                },
            };
            let (out, stdout, stderr) = run(lockstep(self.dir.path()).args(&args));
            assert!(
                out.status.success(),
                "{ctx}conflicts {}: {stdout}\n{stderr}",
                args.join(" ")
            );
            let stored: Value = serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{ctx}resolve output is not JSON ({e}): {stdout}"));
            let got = actual(&stored, mapped);
            assert_eq!(
                (
                    got.status,
                    got.decision.as_str(),
                    &got.resolution,
                    got.deletes
                ),
                ("resolved", decision, &resolution, resolution.is_none()),
                "{ctx}conflicts {} stored: {stored}",
                args.join(" ")
            );
            cov.resolved_by_hand += 1;
            model.open.remove(&key);
            let h = &mut model.history[i];
            h.status = "resolved";
            h.decision = decision.to_owned();
            h.resolution = resolution.clone();
            h.deletes = resolution.is_none();
            model.resolved.insert(key, (resolution, i));
        }
    }

    /// Every policy in turn, `rounds` in all.
    fn all_policies(&mut self, rounds: usize, mut kills: Option<&mut Kills>) {
        let mut rng = Rng(self.seed);
        let per_policy = rounds.div_ceil(POLICIES.len()).max(1);
        for policy in POLICIES {
            let started = Instant::now();
            let cov = self.policy_rounds(&mut rng, policy, per_policy, kills.as_deref_mut());
            eprintln!(
                "{} {}: {per_policy} rounds in {:.1?}: {cov:?}",
                self.label,
                policy.name(),
                started.elapsed()
            );
            assert!(
                cov.conflicts > 0 || per_policy < 20,
                "LOCKSTEP_TWO_WAY_SEED={}: {} rounds of {} made no conflict",
                self.seed,
                per_policy,
                policy.name()
            );
        }
    }
}

fn sqlite_postgres(seed: u64, prefix: &str) -> Option<(Pair, lockstep_e2e::TempDatabase)> {
    let pg = postgres_database(prefix)?;
    let url = pg.url.clone();
    let pair = Pair::new("SQLite a / PostgreSQL b", seed, |dir, rt| {
        let path: PathBuf = dir.join("a.db");
        rt.block_on(async {
            (
                Store::sqlite(&path, PLAIN).await,
                Store::postgres(&url, RENAMED).await,
            )
        })
    });
    Some((pair, pg))
}

#[test]
fn two_way_model_sqlite_and_postgres() {
    let seed = seed();
    eprintln!("LOCKSTEP_TWO_WAY_SEED={seed}");
    let Some((mut pair, _pg)) = sqlite_postgres(seed, "two_way_sp") else {
        return;
    };
    let rounds = env_count("LOCKSTEP_TWO_WAY_ROUNDS", DEFAULT_ROUNDS);
    let started = Instant::now();
    pair.all_policies(rounds, None);
    eprintln!(
        "{}: {rounds} rounds in {:.1?} (seed {seed})",
        pair.label,
        started.elapsed()
    );
}

#[test]
fn two_way_model_postgres_and_mariadb() {
    let seed = seed();
    eprintln!("LOCKSTEP_TWO_WAY_SEED={seed}");
    let Some(pg) = postgres_database("two_way_pm_a") else {
        return;
    };
    let Some(my) = mysql_database("two_way_pm_b") else {
        return;
    };
    let mut pair = Pair::new("PostgreSQL a / MariaDB b", seed, |_, rt| {
        rt.block_on(async {
            (
                Store::postgres(&pg.url, PLAIN).await,
                Store::mariadb(&my.url, PLAIN).await,
            )
        })
    });
    let rounds = env_count("LOCKSTEP_TWO_WAY_ROUNDS", DEFAULT_ROUNDS);
    let started = Instant::now();
    pair.all_policies(rounds, None);
    eprintln!(
        "{}: {rounds} rounds in {:.1?} (seed {seed})",
        pair.label,
        started.elapsed()
    );
    drop(pair);
}

#[test]
fn two_way_model_survives_kills() {
    let seed = seed();
    eprintln!("LOCKSTEP_TWO_WAY_SEED={seed}");
    let Some((mut pair, _pg)) = sqlite_postgres(seed, "two_way_kill") else {
        return;
    };
    let rounds = env_count("LOCKSTEP_TWO_WAY_KILL_ROUNDS", DEFAULT_KILL_ROUNDS);
    let started = Instant::now();
    let mut kills = Kills::default();
    pair.all_policies(rounds, Some(&mut kills));
    eprintln!(
        "{} with kills: {rounds} rounds in {:.1?} (seed {seed}): {kills:?}",
        pair.label,
        started.elapsed()
    );
    assert!(
        kills.before_writes + kills.after_writes > rounds / 2 && kills.after_writes > 0,
        "LOCKSTEP_TWO_WAY_SEED={seed}: most kills should hit a running run, some after it \
         began writing: {kills:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Between two SQLite files: the conflicts CLI, focused cases, the config rules.

/// The table of the SQLite examples, with a modification time a trigger keeps.
const SQLITE_TABLE: [&str; 2] = [
    "CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT, name TEXT, updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))",
    "CREATE TRIGGER touch AFTER UPDATE ON contacts FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at BEGIN UPDATE contacts SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = NEW.id; END",
];

/// A two-way sync `people` between `a.db` and `b.db` in `dir`: `fields` lines go in its
/// `fields` table, `two_way` lines in its `two_way` table.
fn sqlite_config(dir: &Path, fields: &str, two_way: &str) {
    std::fs::write(
        dir.join("lockstep.toml"),
        format!(
            "[state]\nurl = \"sqlite://state.db\"\n\n\
             [connections.a]\nconnector = \"sqlite\"\nconfig = {{ path = \"a.db\" }}\n\n\
             [connections.b]\nconnector = \"sqlite\"\nconfig = {{ path = \"b.db\" }}\n\n\
             [syncs.people]\nsource = \"a.contacts\"\ndestination = \"b.contacts\"\n\
             mode = \"two-way\"\ncursor = \"updated_at\"\nkey = [\"id\"]\n\
             max_delete_fraction = 1.0\n\n\
             [syncs.people.fields]\nid = \"id\"\nemail = \"email\"\nname = \"name\"\n{fields}\n\
             [syncs.people.two_way]\n{two_way}\n"
        ),
    )
    .unwrap();
}

/// Both SQLite files with the table, and `seed` inserted on side a.
fn sqlite_sides(dir: &Path, seed: &[&str]) {
    sqlite_exec(&dir.join("a.db"), &SQLITE_TABLE);
    sqlite_exec(&dir.join("b.db"), &SQLITE_TABLE);
    sqlite_exec(&dir.join("a.db"), seed);
}

/// Every row of `db`'s contacts as `id|email|name`.
fn sqlite_rows(db: &Path) -> Vec<String> {
    lockstep_e2e::block_on(async {
        let pool = lockstep_e2e::sqlite_pool(db).await;
        let rows = sqlx::query("SELECT id, email, name FROM contacts ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows.iter()
            .map(|r| {
                format!(
                    "{}|{}|{}",
                    r.get::<i64, _>(0),
                    r.get::<Option<String>, _>(1).unwrap_or_default(),
                    r.get::<Option<String>, _>(2).unwrap_or_else(|| "∅".into())
                )
            })
            .collect()
    })
}

/// `lockstep run people -o json` that must succeed.
fn run_people(dir: &Path) -> Value {
    let (code, report, stderr) = run_sync(dir, "people");
    assert_eq!(code, 0, "{report}\n{stderr}");
    report
}

fn written(report: &Value) -> u64 {
    metric(report, "added") + metric(report, "updated") + metric(report, "deleted")
}

/// `lockstep conflicts ARGS…`: (success, stdout, stderr).
fn conflicts_cli(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let (out, stdout, stderr) = run(lockstep(dir).arg("conflicts").args(args));
    (out.status.success(), stdout, stderr)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn conflicts_resolve_round_trip_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (d.join("a.db"), d.join("b.db"));
    sqlite_sides(
        d,
        &["INSERT INTO contacts (id, email, name) VALUES (1, 'ann@x', 'Ann'), (2, 'bob@x', 'Bob'), (3, 'cy@x', 'Cy'), (4, 'dee@x', 'Dee')"],
    );
    sqlite_config(
        d,
        "",
        "policy = \"manual\"\nfallback = \"prefer-a\"\nb_cursor = \"updated_at\"",
    );
    let first = run_people(d);
    assert_eq!(metric(&first, "added"), 4, "{first}");

    // Both sides change records 1..=3 differently; record 4 changes on side b only.
    sqlite_exec(
        &a,
        &[
            "UPDATE contacts SET name = 'Ann A' WHERE id = 1",
            "UPDATE contacts SET email = 'bob@a' WHERE id = 2",
            "UPDATE contacts SET name = 'Cy A' WHERE id = 3",
        ],
    );
    sqlite_exec(
        &b,
        &[
            "UPDATE contacts SET name = 'Ann B', email = 'ann@b' WHERE id = 1",
            "DELETE FROM contacts WHERE id = 2",
            "UPDATE contacts SET name = 'Cy B' WHERE id = 3",
            "UPDATE contacts SET name = 'Dee B' WHERE id = 4",
        ],
    );
    let queued = run_people(d);
    assert_eq!(
        (metric(&queued, "conflicts"), metric(&queued, "updated")),
        (3, 1),
        "three conflicts queued, record 4 written to side a: {queued}"
    );
    // Neither side is written for a queued record.
    assert_eq!(
        sqlite_rows(&a),
        [
            "1|ann@x|Ann A",
            "2|bob@a|Bob",
            "3|cy@x|Cy A",
            "4|dee@x|Dee B"
        ]
    );
    assert_eq!(
        sqlite_rows(&b),
        ["1|ann@b|Ann B", "3|cy@x|Cy B", "4|dee@x|Dee B"]
    );

    // list: the open conflicts, as JSON and as a table.
    let (ok, stdout, stderr) = conflicts_cli(d, &["list", "-o", "json"]);
    assert!(ok, "{stderr}");
    let open = json(&stdout);
    let open = open.as_array().unwrap();
    assert_eq!(open.len(), 3, "{stdout}");
    let id_of = |key: &str| {
        open.iter()
            .find(|c| c["key"] == key)
            .unwrap_or_else(|| panic!("no conflict on {key}: {stdout}"))["id"]
            .as_i64()
            .unwrap()
    };
    let (c1, c2, c3) = (id_of("[1]"), id_of("[2]"), id_of("[3]"));
    for c in open {
        assert_eq!(
            (
                c["status"].as_str(),
                c["decision"].as_str(),
                c["policy"].as_str()
            ),
            (Some("open"), Some("queued"), Some("manual")),
            "{c}"
        );
    }
    let (ok, table, _) = conflicts_cli(d, &["list", "people"]);
    assert!(ok);
    assert!(
        table.contains("STATUS") && table.contains("[2]") && table.contains("open"),
        "{table}"
    );

    // show: base, both sides and the fields that differ.
    let (ok, stdout, stderr) = conflicts_cli(d, &["show", &c1.to_string(), "-o", "json"]);
    assert!(ok, "{stderr}");
    let shown = json(&stdout);
    assert_eq!(shown["base"]["name"], "Ann", "{shown}");
    assert_eq!(shown["a"]["name"], "Ann A", "{shown}");
    assert_eq!(
        (&shown["b"]["name"], &shown["b"]["email"]),
        (&Value::from("Ann B"), &Value::from("ann@b")),
        "{shown}"
    );
    let mut fields: Vec<&str> = shown["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["email", "name"], "{shown}");
    let (ok, stdout, _) = conflicts_cli(d, &["show", &c2.to_string(), "-o", "json"]);
    assert!(ok);
    assert!(
        json(&stdout)["b"].is_null(),
        "side b deleted record 2: {stdout}"
    );
    let (ok, text, _) = conflicts_cli(d, &["show", &c1.to_string()]);
    assert!(ok);
    assert!(
        text.contains("differs") && text.contains("\"Ann A\"") && text.contains("\"Ann B\""),
        "{text}"
    );

    // Decisions that cannot be taken leave the conflict open.
    let (ok, _, stderr) = conflicts_cli(d, &["resolve", &c1.to_string()]);
    assert!(!ok && stderr.contains("say what to keep"), "{stderr}");
    let (ok, _, stderr) = conflicts_cli(d, &["resolve", &c1.to_string(), "--set", "phone=1"]);
    assert!(
        !ok && stderr.contains("the record has no such field") && stderr.contains("email"),
        "{stderr}"
    );
    let (ok, _, stderr) = conflicts_cli(
        d,
        &["resolve", &c2.to_string(), "--take", "b", "--set", "name=x"],
    );
    assert!(!ok && stderr.contains("deleted the record"), "{stderr}");
    let (ok, stdout, _) = conflicts_cli(d, &["list", "-o", "json"]);
    assert!(ok);
    assert_eq!(json(&stdout).as_array().unwrap().len(), 3, "{stdout}");

    // A value set by hand (on top of side b's values), side b's delete, and side a's values
    // with an email set by hand, applied now.
    let (ok, stdout, stderr) = conflicts_cli(
        d,
        &[
            "resolve",
            &c1.to_string(),
            "--set",
            "name=\"Hand Made\"",
            "-o",
            "json",
        ],
    );
    assert!(ok, "{stderr}");
    let r1 = json(&stdout);
    assert_eq!(
        (r1["status"].as_str(), r1["decision"].as_str()),
        (Some("resolved"), Some("set")),
        "{r1}"
    );
    assert_eq!(
        (&r1["resolution"]["name"], &r1["resolution"]["email"]),
        (&Value::from("Hand Made"), &Value::from("ann@b")),
        "{r1}"
    );
    assert!(r1["resolved_by"].is_string(), "{r1}");
    let (ok, stdout, stderr) = conflicts_cli(d, &["resolve", &c2.to_string(), "--take", "b"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("conflict {c2}")) && stdout.contains("next run"),
        "{stdout}"
    );
    let (ok, stdout, _) = conflicts_cli(d, &["show", &c2.to_string(), "-o", "json"]);
    assert!(ok);
    let r2 = json(&stdout);
    assert_eq!(
        (
            r2["status"].as_str(),
            r2["decision"].as_str(),
            r2["resolution_deletes"].as_bool()
        ),
        (Some("resolved"), Some("take b"), Some(true)),
        "{r2}"
    );
    // Not applied yet: both sides as they were.
    assert_eq!(
        sqlite_rows(&b),
        ["1|ann@b|Ann B", "3|cy@x|Cy B", "4|dee@x|Dee B"]
    );

    let (ok, stdout, stderr) = conflicts_cli(
        d,
        &[
            "resolve",
            &c3.to_string(),
            "--take",
            "a",
            "--set",
            "email=cy@hand",
            "--apply",
            "-o",
            "json",
        ],
    );
    assert!(ok, "{stdout}\n{stderr}");
    // --apply -o json prints one document: the report of the run that applied the decision.
    let report = json(&stdout);
    assert_eq!(report["status"], "succeeded", "{stdout}");
    let (ok, stdout, _) = conflicts_cli(d, &["show", &c3.to_string(), "-o", "json"]);
    assert!(ok, "{stdout}");
    let stored = json(&stdout);
    assert_eq!(stored["resolution"]["email"], "cy@hand", "{stdout}");
    assert_eq!(stored["resolution"]["name"], "Cy A", "{stdout}");

    // All three decisions are on both sides.
    let want = ["1|ann@b|Hand Made", "3|cy@hand|Cy A", "4|dee@x|Dee B"];
    assert_eq!(sqlite_rows(&a), want);
    assert_eq!(sqlite_rows(&b), want);
    let (ok, stdout, _) = conflicts_cli(d, &["list", "--all", "-o", "json"]);
    assert!(ok);
    let all = json(&stdout);
    let statuses: Vec<(&str, &str)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["key"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        statuses,
        [("[1]", "applied"), ("[2]", "applied"), ("[3]", "applied")],
        "{stdout}"
    );
    let (ok, stdout, _) = conflicts_cli(d, &["list"]);
    assert!(
        ok && stdout.contains("No conflicts waiting for a person"),
        "{stdout}"
    );

    // Only an open conflict can be resolved, and only one that exists.
    let (ok, _, stderr) = conflicts_cli(d, &["resolve", &c1.to_string(), "--take", "a"]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "conflict {c1} is applied, not open: only a conflict waiting for a person can be \
             resolved"
        )),
        "{stderr}"
    );
    let (ok, _, stderr) = conflicts_cli(d, &["resolve", "999999", "--take", "a", "-o", "json"]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("no conflict with id 999999; `lockstep conflicts list --all` shows them"),
        "{stderr}"
    );
    let (ok, _, stderr) = conflicts_cli(d, &["show", "999999"]);
    assert!(
        !ok && stderr.contains("no conflict with id 999999"),
        "{stderr}"
    );

    // Nothing left to do.
    let idle = run_people(d);
    assert_eq!(
        (written(&idle), metric(&idle, "conflicts")),
        (0, 0),
        "{idle}"
    );
    assert_eq!(sqlite_rows(&a), want);
    assert_eq!(sqlite_rows(&b), want);
}

/// A record whose base comes back to the base of an earlier, automatically decided conflict
/// and then conflicts again: that is a second conflict, recorded as such; the first keeps
/// its values and decision.
#[test]
fn a_conflict_on_a_base_seen_before_is_a_new_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (d.join("a.db"), d.join("b.db"));
    sqlite_sides(
        d,
        &["INSERT INTO contacts (id, email, name) VALUES (1, 'ann@x', 'Ann')"],
    );
    sqlite_config(d, "", "policy = \"prefer-a\"\nb_cursor = \"updated_at\"");
    run_people(d);
    sqlite_exec(&a, &["UPDATE contacts SET name = 'A1' WHERE id = 1"]);
    sqlite_exec(&b, &["UPDATE contacts SET name = 'B1' WHERE id = 1"]);
    assert_eq!(metric(&run_people(d), "conflicts"), 1);
    // Back to the first base, agreed by both sides.
    sqlite_exec(&a, &["UPDATE contacts SET name = 'Ann' WHERE id = 1"]);
    run_people(d);
    assert_eq!(sqlite_rows(&b), ["1|ann@x|Ann"]);
    sqlite_exec(&a, &["UPDATE contacts SET name = 'A2' WHERE id = 1"]);
    sqlite_exec(&b, &["UPDATE contacts SET name = 'B2' WHERE id = 1"]);
    let second = run_people(d);
    assert_eq!(metric(&second, "conflicts"), 1, "{second}");
    assert_eq!(sqlite_rows(&b), ["1|ann@x|A2"]);

    let (ok, stdout, stderr) = conflicts_cli(d, &["list", "--all", "-o", "json"]);
    assert!(ok, "{stderr}");
    let all = json(&stdout);
    let mut seen: Vec<(String, String, String)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["a"]["name"].to_string(),
                c["b"]["name"].to_string(),
                c["resolution"]["name"].to_string(),
            )
        })
        .collect();
    seen.sort();
    let quoted = |s: &str| format!("\"{s}\"");
    assert_eq!(
        seen,
        [
            (quoted("A1"), quoted("B1"), quoted("A1")),
            (quoted("A2"), quoted("B2"), quoted("A2")),
        ],
        "two conflicts, each with its own values and decision: {stdout}"
    );
}

/// A field listed in `one_way` flows from a to b only; when side b changes a field it is
/// computed from, side b's copy follows side a's new value.
#[test]
fn a_one_way_field_follows_side_a() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (d.join("a.db"), d.join("b.db"));
    sqlite_sides(
        d,
        &["INSERT INTO contacts (id, email, name) VALUES (1, 'ann@x', 'ann')"],
    );
    sqlite_config(
        d,
        "shout = { expr = \"upper(name)\" }",
        "policy = \"prefer-a\"\nb_cursor = \"updated_at\"\none_way = [\"shout\"]",
    );
    let shout = || {
        lockstep_e2e::block_on(async {
            let pool = lockstep_e2e::sqlite_pool(&b).await;
            let v: Option<String> = sqlx::query_scalar("SELECT shout FROM contacts WHERE id = 1")
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            v
        })
    };
    run_people(d);
    assert_eq!(shout().as_deref(), Some("ANN"));
    // Side a changes: b gets the new value.
    sqlite_exec(&a, &["UPDATE contacts SET name = 'cy' WHERE id = 1"]);
    run_people(d);
    assert_eq!(shout().as_deref(), Some("CY"));
    // Side b changes the name: a gets it, and b's one-way copy follows (within two runs).
    sqlite_exec(&b, &["UPDATE contacts SET name = 'bob' WHERE id = 1"]);
    run_people(d);
    assert_eq!(sqlite_rows(&a), ["1|ann@x|bob"]);
    run_people(d);
    assert_eq!(
        shout().as_deref(),
        Some("BOB"),
        "side b's one-way `shout` must follow upper(name) once side a has the new name"
    );
    let idle = run_people(d);
    assert_eq!(
        (written(&idle), metric(&idle, "conflicts")),
        (0, 0),
        "{idle}"
    );
}

#[test]
fn two_way_config_rules() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sqlite_sides(
        d,
        &["INSERT INTO contacts (id, email, name) VALUES (1, 'ann@x', 'ann')"],
    );
    let validate = || run(lockstep(d).arg("validate"));

    // A computed field cannot be written back to side a: refused, naming the field…
    sqlite_config(
        d,
        "shout = { expr = \"upper(name)\" }",
        "policy = \"prefer-a\"\nb_cursor = \"updated_at\"",
    );
    let (out, stdout, stderr) = validate();
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains(
            "field `shout` of two-way sync `people` is `upper(name)`, which cannot be written \
             back to side a"
        ) && stderr.contains("one_way"),
        "{stderr}"
    );
    let (out, stdout, stderr) = run(lockstep(d).args(["run", "people"]));
    assert!(
        !out.status.success() && stderr.contains("field `shout` of two-way sync `people`"),
        "{stdout}\n{stderr}"
    );
    assert!(
        sqlite_rows(&d.join("b.db")).is_empty(),
        "a refused config writes nothing"
    );
    // …unless it only flows from a to b.
    sqlite_config(
        d,
        "shout = { expr = \"upper(name)\" }",
        "policy = \"prefer-a\"\nb_cursor = \"updated_at\"\none_way = [\"shout\"]",
    );
    let (out, stdout, stderr) = validate();
    assert!(out.status.success(), "{stdout}\n{stderr}");

    // newest-wins needs side b's modification time.
    sqlite_config(d, "", "policy = \"newest-wins\"");
    let (out, stdout, stderr) = validate();
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("newest-wins in sync `people` needs side b's modification time")
            && stderr.contains("b_cursor"),
        "{stderr}"
    );
    // As a fallback too.
    sqlite_config(
        d,
        "",
        "policy = \"merge-fields\"\nfallback = \"newest-wins\"",
    );
    let (out, _, stderr) = validate();
    assert!(
        !out.status.success()
            && stderr.contains("newest-wins in sync `people` needs side b's modification time"),
        "{stderr}"
    );
    // With it, valid.
    sqlite_config(d, "", "policy = \"newest-wins\"\nb_cursor = \"updated_at\"");
    let (out, stdout, stderr) = validate();
    assert!(out.status.success(), "{stdout}\n{stderr}");
}

/// The daemon's side of the conflict queue: a scheduled run that queues a conflict raises one
/// `conflicts-queued` alert (not one per later run that finds it still open), `/metrics`
/// counts it in `lockstep_open_conflicts`, and the gauge goes back to 0 once a person's
/// decision was applied by the next scheduled run.
#[test]
fn the_daemon_alerts_once_when_a_conflict_waits_and_the_gauge_follows_the_queue() {
    use crate::daemon::{Daemon, Receiver};

    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (d.join("a.db"), d.join("b.db"));
    sqlite_sides(
        d,
        &["INSERT INTO contacts (id, email, name) VALUES (1, 'ann@x', 'Ann'), (2, 'bob@x', 'Bob')"],
    );
    sqlite_config(d, "", "policy = \"manual\"\nb_cursor = \"updated_at\"");
    let first = run_people(d);
    assert_eq!(metric(&first, "added"), 2, "{first}");

    // Scheduled every second, with a webhook for alerts.
    let mut config = std::fs::read_to_string(d.join("lockstep.toml")).unwrap();
    config += &format!(
        "\n[syncs.people.schedule]\nevery = \"1s\"\n\n[[alerts.webhook]]\nurl = \"{}\"\n",
        receiver.url
    );
    std::fs::write(d.join("lockstep.toml"), config).unwrap();
    // Ann renamed differently on both sides: a conflict for a person.
    sqlite_exec(&a, &["UPDATE contacts SET name = 'Annie' WHERE id = 1"]);
    sqlite_exec(&b, &["UPDATE contacts SET name = 'Anna' WHERE id = 1"]);

    let daemon = Daemon::start(d);
    let queued_alerts = || -> Vec<Value> {
        receiver
            .bodies()
            .into_iter()
            .filter(|body| body["kind"] == "conflicts-queued")
            .collect()
    };
    let gauge = |d: &Daemon| -> Option<String> {
        d.get("/metrics")
            .lines()
            .find(|l| l.starts_with("lockstep_open_conflicts{sync=\"people\"}"))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
    };
    daemon.wait_for(
        Duration::from_secs(60),
        "a conflicts-queued alert and three more succeeded runs",
        |d| {
            !queued_alerts().is_empty()
                && crate::daemon::count(&d.finished_runs("people"), "succeeded") >= 4
        },
    );
    let alerts = queued_alerts();
    assert_eq!(alerts.len(), 1, "one alert, not one per run: {alerts:?}");
    assert_eq!(alerts[0]["sync"], "people", "{}", alerts[0]);
    let reason = alerts[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("1 conflict of this run")
            && reason.contains("lockstep conflicts list people"),
        "{reason}"
    );
    assert_eq!(
        gauge(&daemon).as_deref(),
        Some("1"),
        "{}",
        daemon.get("/metrics")
    );
    assert_eq!(
        sqlite_rows(&a)[0],
        "1|ann@x|Annie",
        "side a keeps its value while queued"
    );
    assert_eq!(
        sqlite_rows(&b)[0],
        "1|ann@x|Anna",
        "side b keeps its value while queued"
    );

    // A person takes side b; the next scheduled run applies it and the gauge drops to 0.
    let listed = list_conflicts(d, "people");
    let id = listed
        .iter()
        .find(|c| c["status"] == "open")
        .and_then(|c| c["id"].as_i64())
        .expect("the open conflict");
    let (ok, stdout, stderr) = conflicts_cli(d, &["resolve", &id.to_string(), "--take", "b"]);
    assert!(ok, "{stdout}\n{stderr}");
    daemon.wait_for(
        Duration::from_secs(60),
        "the decision applied on both sides and the gauge at 0",
        |d| gauge(d).as_deref() == Some("0") && sqlite_rows(&a)[0] == "1|ann@x|Anna",
    );
    assert_eq!(sqlite_rows(&b)[0], "1|ann@x|Anna");
    assert_eq!(
        queued_alerts().len(),
        1,
        "a resolved conflict raises no alert"
    );
}

/// `reconcile_every = 2`: a two-way sync compares key sets every second run, so a record
/// deleted on one side is deleted on the other by the first run that compares, and not
/// before; edits still flow on every run.
#[test]
fn a_two_way_sync_compares_key_sets_every_reconcile_every_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (d.join("a.db"), d.join("b.db"));
    sqlite_sides(
        d,
        &["INSERT INTO contacts (id, email, name) VALUES (1, 'ann@x', 'Ann'), (2, 'bob@x', 'Bob'), (3, 'cy@x', 'Cy')"],
    );
    sqlite_config(d, "", "policy = \"prefer-a\"\nb_cursor = \"updated_at\"");
    let path = d.join("lockstep.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen(
            "max_delete_fraction = 1.0",
            "max_delete_fraction = 1.0\nreconcile_every = 2",
            1,
        ),
    )
    .unwrap();
    // Run 1 fills side b; run 2 compares key sets (none compared yet) and finds nothing.
    assert_eq!(metric(&run_people(d), "added"), 3);
    assert_eq!(metric(&run_people(d), "deleted"), 0);

    // Bob leaves side a and Cy is renamed there: run 3 does not compare, so only the rename
    // goes across; run 4 compares and deletes Bob on side b.
    sqlite_exec(
        &a,
        &[
            "DELETE FROM contacts WHERE id = 2",
            "UPDATE contacts SET name = 'Cyrus' WHERE id = 3",
        ],
    );
    let third = run_people(d);
    assert_eq!(
        (metric(&third, "updated"), metric(&third, "deleted")),
        (1, 0),
        "{third}"
    );
    assert_eq!(
        sqlite_rows(&b),
        ["1|ann@x|Ann", "2|bob@x|Bob", "3|cy@x|Cyrus"]
    );
    let fourth = run_people(d);
    assert_eq!(metric(&fourth, "deleted"), 1, "{fourth}");
    assert_eq!(sqlite_rows(&b), ["1|ann@x|Ann", "3|cy@x|Cyrus"]);
    assert_eq!(sqlite_rows(&a), sqlite_rows(&b));
}

/// Side b refuses names longer than five characters (a trigger, so that the test can lift
/// the limit later).
const SHORT_NAMES_ON_B: [&str; 2] = [
    "CREATE TRIGGER short_insert BEFORE INSERT ON contacts WHEN length(NEW.name) > 5 BEGIN SELECT RAISE(ABORT, 'name too long for side b'); END",
    "CREATE TRIGGER short_update BEFORE UPDATE ON contacts WHEN length(NEW.name) > 5 BEGIN SELECT RAISE(ABORT, 'name too long for side b'); END",
];

/// `lockstep rejects list people [--all] -o json`, oldest first.
fn list_rejects(dir: &Path, all: bool) -> Vec<Value> {
    let mut args = vec!["rejects", "list", "people", "-o", "json"];
    if all {
        args.push("--all");
    }
    let (out, stdout, stderr) = run(lockstep(dir).args(&args));
    assert!(out.status.success(), "rejects list: {stdout}\n{stderr}");
    let mut records = json(&stdout).as_array().cloned().unwrap();
    records.reverse();
    records
}

/// A record side b refuses is not lost: it is stored as a pending reject (side, key,
/// reason, the values written), the run's `max_rejected` judges it, every later run decides
/// it again (refused again: the same reject, one attempt more), and once side b takes it (the
/// value fixed on side a, or the limit lifted and `rejects retry`) the reject is resolved and
/// both sides agree.
#[test]
fn a_record_a_side_refuses_is_kept_as_a_reject_and_retried_until_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (d.join("a.db"), d.join("b.db"));
    sqlite_sides(
        d,
        &["INSERT INTO contacts (id, email, name) VALUES (1, 'ann@x', 'Ann'), (2, 'bob@x', 'Bob'), (3, 'cy@x', 'Cy')"],
    );
    sqlite_exec(&b, &SHORT_NAMES_ON_B);
    sqlite_config(d, "", "policy = \"prefer-a\"\nb_cursor = \"updated_at\"");
    assert_eq!(metric(&run_people(d), "added"), 3);

    // Side a gives records 1 and 2 names side b refuses; side b renames record 3.
    sqlite_exec(
        &a,
        &[
            "UPDATE contacts SET name = 'Annabelle' WHERE id = 1",
            "UPDATE contacts SET name = 'Roberto' WHERE id = 2",
        ],
    );
    sqlite_exec(&b, &["UPDATE contacts SET name = 'Cyd' WHERE id = 3"]);
    // Two of the three records read are refused: past max_rejected (10%), so the run fails,
    // but what it did is committed and the refused records are kept.
    let (code, refused, stderr) = run_sync(d, "people");
    assert_ne!(code, 0, "{refused}\n{stderr}");
    assert!(
        refused.to_string().contains("max_rejected"),
        "{refused}\n{stderr}"
    );
    assert_eq!(metric(&refused, "rejected"), 2, "{refused}");
    assert_eq!(
        metric(&refused, "updated"),
        1,
        "only record 3 was written: {refused}"
    );
    assert_eq!(sqlite_rows(&a)[2], "3|cy@x|Cyd");
    assert_eq!(
        sqlite_rows(&b),
        ["1|ann@x|Ann", "2|bob@x|Bob", "3|cy@x|Cyd"]
    );
    let pending = list_rejects(d, false);
    let shown: Vec<(String, String)> = pending
        .iter()
        .map(|r| (r["key"].to_string(), r["raw"]["name"].to_string()))
        .collect();
    assert_eq!(
        shown,
        [
            ("\"[1]\"".to_owned(), "\"Annabelle\"".to_owned()),
            ("\"[2]\"".to_owned(), "\"Roberto\"".to_owned()),
        ],
        "{pending:?}"
    );
    for r in &pending {
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("side b (destination) refused the record: ")
                && reason.contains("name too long for side b"),
            "{reason}"
        );
        assert_eq!(r["sync"], "people");
        assert_eq!(r["run"], refused["run"], "{r}");
    }

    // A run with no edits decides them again: refused again, the same rejects (one attempt
    // more), nothing written, and the run succeeds (retries alone do not count against
    // max_rejected).
    let again = run_people(d);
    assert_eq!(
        (metric(&again, "rejected"), written(&again)),
        (2, 0),
        "{again}"
    );
    let pending_again = list_rejects(d, true);
    assert_eq!(pending_again.len(), 2, "{pending_again:?}");
    for (before, now) in pending.iter().zip(&pending_again) {
        assert_eq!(before["id"], now["id"], "updated in place: {now}");
        assert!(now["retried"].is_null(), "{now}");
        assert_eq!(now["run"], again["run"], "{now}");
        let reason = now["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("side b (destination) refused the record again (attempt 2): "),
            "{reason}"
        );
    }

    // Fixed on side a: record 2 goes across and its reject is resolved; record 1 is still
    // refused.
    sqlite_exec(&a, &["UPDATE contacts SET name = 'Bobby' WHERE id = 2"]);
    let fixed = run_people(d);
    assert_eq!(
        (metric(&fixed, "updated"), metric(&fixed, "rejected")),
        (1, 1),
        "{fixed}"
    );
    assert_eq!(sqlite_rows(&b)[1], "2|bob@x|Bobby");
    let pending = list_rejects(d, false);
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["key"], "[1]");
    assert!(
        pending[0]["reason"]
            .as_str()
            .unwrap()
            .contains("(attempt 3)"),
        "{pending:?}"
    );

    // Side b lifts its limit; `rejects retry` runs the sync, which delivers record 1.
    sqlite_exec(
        &b,
        &["DROP TRIGGER short_insert", "DROP TRIGGER short_update"],
    );
    let (out, stdout, stderr) = run(lockstep(d).args(["rejects", "retry", "people", "-o", "json"]));
    assert!(out.status.success(), "rejects retry: {stdout}\n{stderr}");
    let retried = json(&stdout);
    assert_eq!(
        (retried["retried"].as_u64(), retried["succeeded"].as_u64()),
        (Some(1), Some(1)),
        "{retried}"
    );
    assert_eq!(
        sqlite_rows(&b),
        ["1|ann@x|Annabelle", "2|bob@x|Bobby", "3|cy@x|Cyd"]
    );
    assert_eq!(sqlite_rows(&a), sqlite_rows(&b));
    assert!(list_rejects(d, false).is_empty());
    let history = list_rejects(d, true);
    assert_eq!(history.len(), 2, "{history:?}");
    for r in &history {
        let note = r["retried"].as_str().unwrap_or_default();
        assert!(note.starts_with("resolved in run "), "{r}");
    }

    // Settled: a run with no edits writes nothing and refuses nothing.
    let idle = run_people(d);
    assert_eq!(
        (
            written(&idle),
            metric(&idle, "rejected"),
            metric(&idle, "conflicts")
        ),
        (0, 0, 0),
        "{idle}"
    );
}

/// A record both sides changed, merged, and refused by side b: side a takes the merge, and
/// the retries write the same merge to side b without finding the conflict again; once side
/// b takes it, both sides hold the merge.
#[test]
fn a_refused_merge_is_retried_without_a_new_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (d.join("a.db"), d.join("b.db"));
    sqlite_sides(
        d,
        &["INSERT INTO contacts (id, email, name) VALUES (1, 'ann@x', 'Ann'), (2, 'bob@x', 'Bob')"],
    );
    sqlite_exec(&b, &SHORT_NAMES_ON_B);
    sqlite_config(
        d,
        "",
        "policy = \"merge-fields\"\nfallback = \"prefer-a\"\nb_cursor = \"updated_at\"",
    );
    let path = d.join("lockstep.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen(
            "max_delete_fraction = 1.0",
            "max_delete_fraction = 1.0\nmax_rejected = 10",
            1,
        ),
    )
    .unwrap();
    run_people(d);
    sqlite_exec(&a, &["UPDATE contacts SET name = 'Annabelle' WHERE id = 1"]);
    sqlite_exec(&b, &["UPDATE contacts SET email = 'ann@b' WHERE id = 1"]);
    let merged = run_people(d);
    assert_eq!(metric(&merged, "rejected"), 1, "{merged}");
    assert_eq!(sqlite_rows(&a)[0], "1|ann@b|Annabelle");
    assert_eq!(sqlite_rows(&b)[0], "1|ann@b|Ann");
    let conflicts = list_conflicts(d, "people").len();

    for _ in 0..2 {
        let again = run_people(d);
        assert_eq!(
            (
                metric(&again, "rejected"),
                metric(&again, "conflicts"),
                written(&again)
            ),
            (1, 0, 0),
            "{again}"
        );
    }
    assert_eq!(list_conflicts(d, "people").len(), conflicts);
    assert_eq!(list_rejects(d, false).len(), 1);

    sqlite_exec(
        &b,
        &["DROP TRIGGER short_insert", "DROP TRIGGER short_update"],
    );
    let delivered = run_people(d);
    assert_eq!(
        (
            metric(&delivered, "rejected"),
            metric(&delivered, "conflicts")
        ),
        (0, 0),
        "{delivered}"
    );
    assert_eq!(sqlite_rows(&b), ["1|ann@b|Annabelle", "2|bob@x|Bob"]);
    assert_eq!(sqlite_rows(&a), sqlite_rows(&b));
    assert!(list_rejects(d, false).is_empty());
    let idle = run_people(d);
    assert_eq!(
        (
            written(&idle),
            metric(&idle, "rejected"),
            metric(&idle, "conflicts")
        ),
        (0, 0, 0),
        "{idle}"
    );
}

/// A run killed at each point of its chunks (two keys each) and of its deletes, then run
/// again: both sides end as one uninterrupted run leaves them, every conflict is recorded
/// once, and a further run writes nothing.
#[test]
fn a_run_killed_between_its_chunks_loses_nothing() {
    const FAULTS: [&str; 6] = [
        "after-flush:1",
        "after-commit:1",
        "after-flush:3",
        "after-commit:5",
        "before-delete:1",
        "after-delete:1",
    ];
    for fault in FAULTS {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (a, b) = (d.join("a.db"), d.join("b.db"));
        let seed: Vec<String> = (1..=10)
            .map(|i| {
                format!("INSERT INTO contacts (id, email, name) VALUES ({i}, 'p{i}@x', 'P{i}')")
            })
            .collect();
        let seed: Vec<&str> = seed.iter().map(String::as_str).collect();
        sqlite_sides(d, &seed);
        sqlite_config(d, "", "policy = \"prefer-b\"\nb_cursor = \"updated_at\"");
        let first = run_people(d);
        assert_eq!(metric(&first, "added"), 10, "{fault}: {first}");

        // Side a changes 1..=6, side b 4..=9 (4..=6 are conflicts, which b wins); a
        // deletes 10; each side adds a record.
        sqlite_exec(
            &a,
            &[
                "UPDATE contacts SET name = 'A' || id WHERE id BETWEEN 1 AND 6",
                "DELETE FROM contacts WHERE id = 10",
                "INSERT INTO contacts (id, email, name) VALUES (11, 'p11@a', 'New A')",
            ],
        );
        sqlite_exec(
            &b,
            &[
                "UPDATE contacts SET name = 'B' || id WHERE id BETWEEN 4 AND 9",
                "INSERT INTO contacts (id, email, name) VALUES (12, 'p12@b', 'New B')",
            ],
        );
        let (out, _, stderr) = run(lockstep(d)
            .args(["run", "people"])
            .env("LOCKSTEP_TWO_WAY_CHUNK", "2")
            .env("LOCKSTEP_FAULT", fault));
        assert!(
            !out.status.success() && stderr.contains("injected fault"),
            "{fault}: the run should have been killed at its fault point:\n{stderr}"
        );

        let rerun = run_people(d);
        let want: Vec<String> = (1..=12)
            .filter(|i| *i != 10)
            .map(|i| match i {
                1..=3 => format!("{i}|p{i}@x|A{i}"),
                4..=9 => format!("{i}|p{i}@x|B{i}"),
                11 => "11|p11@a|New A".to_owned(),
                _ => "12|p12@b|New B".to_owned(),
            })
            .collect();
        assert_eq!(
            sqlite_rows(&a),
            want,
            "{fault}: side a after the rerun: {rerun}"
        );
        assert_eq!(
            sqlite_rows(&b),
            want,
            "{fault}: side b after the rerun: {rerun}"
        );
        let mut keys: Vec<i64> = list_conflicts(d, "people").iter().map(key_of).collect();
        keys.sort_unstable();
        assert_eq!(keys, [4, 5, 6], "{fault}: each conflict is recorded once");
        let idle = run_people(d);
        assert_eq!(
            written(&idle),
            0,
            "{fault}: a run without edits wrote: {idle}"
        );
        assert_eq!(metric(&idle, "conflicts"), 0, "{fault}: {idle}");
    }
}

/// A first run over two sides that already hold records (some alike, one different, one on
/// each side alone) writes only what differs, records the one conflict, and a second run
/// writes nothing; killed after its first chunk commit, its rerun ends the same way.
#[test]
fn a_first_run_over_two_filled_sides_writes_only_what_differs() {
    for fault in [None, Some("after-commit:1")] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (a, b) = (d.join("a.db"), d.join("b.db"));
        sqlite_exec(&a, &SQLITE_TABLE);
        sqlite_exec(&b, &SQLITE_TABLE);
        let alike = "INSERT INTO contacts (id, email, name) VALUES (1, 'p1@x', 'P1'), (2, 'p2@x', NULL), (3, 'p3@x', 'P3'), (4, 'p4@x', 'P4')";
        sqlite_exec(
            &a,
            &[
                alike,
                "INSERT INTO contacts (id, email, name) VALUES (5, 'p5@x', 'A5'), (6, 'p6@a', 'Only A')",
            ],
        );
        sqlite_exec(
            &b,
            &[
                alike,
                "INSERT INTO contacts (id, email, name) VALUES (5, 'p5@x', 'B5'), (7, 'p7@b', 'Only B')",
            ],
        );
        sqlite_config(d, "", "policy = \"prefer-a\"\nb_cursor = \"updated_at\"");
        let first = match fault {
            None => {
                let (out, stdout, stderr) = run(lockstep(d)
                    .args(["run", "people", "-o", "json"])
                    .env("LOCKSTEP_TWO_WAY_CHUNK", "2"));
                assert!(out.status.success(), "{stdout}\n{stderr}");
                let report = json(&stdout);
                assert_eq!(metric(&report, "unchanged"), 8, "{report}");
                assert_eq!(metric(&report, "added"), 2, "{report}");
                assert_eq!(metric(&report, "updated"), 1, "{report}");
                report
            }
            Some(fault) => {
                let (out, _, stderr) = run(lockstep(d)
                    .args(["run", "people"])
                    .env("LOCKSTEP_TWO_WAY_CHUNK", "2")
                    .env("LOCKSTEP_FAULT", fault));
                assert!(
                    !out.status.success() && stderr.contains("injected fault"),
                    "{fault}: the run should have been killed at its fault point:\n{stderr}"
                );
                run_people(d)
            }
        };
        let want = [
            "1|p1@x|P1",
            "2|p2@x|∅",
            "3|p3@x|P3",
            "4|p4@x|P4",
            "5|p5@x|A5",
            "6|p6@a|Only A",
            "7|p7@b|Only B",
        ];
        assert_eq!(sqlite_rows(&a), want, "{fault:?}: {first}");
        assert_eq!(sqlite_rows(&b), want, "{fault:?}: {first}");
        let keys: Vec<i64> = list_conflicts(d, "people").iter().map(key_of).collect();
        assert_eq!(keys, [5], "{fault:?}: the one conflict, recorded once");
        let idle = run_people(d);
        assert_eq!(
            written(&idle),
            0,
            "{fault:?}: a run without edits wrote: {idle}"
        );
        assert_eq!(metric(&idle, "conflicts"), 0, "{fault:?}: {idle}");
    }
}
