//! Type mapping through the binary (issue 3, item 2), and a server that goes away mid-run
//! (item 5).
//!
//! Round trips: one table of columns (logical type, the native type of a source column in each
//! system, and the values of every row) drives the six directions among PostgreSQL, MariaDB
//! and SQLite. Each direction creates the source table, syncs it into a table the destination
//! connector creates, checks the created column types against the connectors' documented
//! tables and every value against the value the test declared, then syncs that table back
//! into a new table of the source system and checks it again. Values are compared after
//! normalizing representation only: integers as i64, decimals as exact decimal text, floats
//! bit for bit, timestamps as UTC microseconds, dates as days, JSON as parsed documents,
//! binary as bytes, UUIDs in canonical lower-case form.
//!
//! Documented transformations are asserted as such: PostgreSQL arrays and unconstrained
//! numerics become json and text; MariaDB has no timestamp with time zone (a created column is
//! DATETIME(6) holding UTC, which reads back as a timestamp) and its `bigint unsigned` is
//! decimal(20,0).
//!
//! Then values a destination cannot hold are rejected with the field named, never truncated;
//! and a destination server that drops the connection mid-run fails the run as transient, and
//! a rerun completes with nothing lost.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lockstep_e2e::{lockstep, mysql_database, postgres_database, run, TempDatabase};
use sqlx::{Connection, Row, TypeInfo, ValueRef};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The type table
// ---------------------------------------------------------------------------------------------

/// Lockstep's logical types (crates/lockstep-protocol), as the connectors' READMEs name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L {
    Bool,
    I32,
    I64,
    F32,
    F64,
    Dec(u8, u8),
    Text,
    Bin,
    Date,
    Time,
    Ts,
    TsTz,
    Uuid,
    Json,
}

/// A value as the test declares it. Temporal values are ISO text (an offset for timestamps
/// with time zone); arrays are a PostgreSQL literal and the JSON they become.
#[derive(Clone, Debug)]
enum V {
    Null,
    Int(i64),
    Dec(&'static str),
    F64(f64),
    F32(f32),
    Text(String),
    Bool(bool),
    Ts(&'static str),
    TsTz(&'static str),
    Date(&'static str),
    Time(&'static str),
    Uuid(&'static str),
    Json(&'static str),
    Bytes(Vec<u8>),
    /// A PostgreSQL array literal, and the JSON it becomes.
    Array(&'static str, &'static str),
}

use V::Null as NULL;

fn t(s: &str) -> V {
    V::Text(s.to_owned())
}

/// One column of the round-trip table.
struct Column {
    name: &'static str,
    logical: L,
    /// The column's type in a source table of each system (`None`: the system has no such
    /// type, so the column exists only when that system is the source).
    postgres: Option<&'static str>,
    mariadb: Option<&'static str>,
    sqlite: Option<&'static str>,
    /// The values of rows [`BASE_IDS`], then of [`WIDE_IDS`].
    values: [V; 9],
}

/// Rows every system holds: 1 typical, 2 NULLs, 3 minimums and empty values, 4 maximums,
/// 5 unicode and the smallest magnitudes, 6 awkward representations.
const BASE_IDS: [i64; 6] = [1, 2, 3, 4, 5, 6];
/// Rows beyond MariaDB's ranges (year 1 and year 10000, subnormal floats, infinities): used
/// only between PostgreSQL and SQLite. Their rejection by MariaDB is tested separately.
const WIDE_IDS: [i64; 3] = [101, 102, 103];

fn columns() -> Vec<Column> {
    let nines = |n: usize| "9".repeat(n);
    let long_text = "αβγ😀 ".repeat(20_000);
    // Every byte value, 4096 times: 1 MiB.
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    let nines38: &'static str = Box::leak(nines(38).into_boxed_str());
    let minus_nines38: &'static str = Box::leak(format!("-{}", nines(38)).into_boxed_str());
    vec![
        Column {
            name: "c_i32",
            logical: L::I32,
            postgres: Some("integer"),
            mariadb: Some("INT"),
            sqlite: Some("INT4"),
            values: [
                V::Int(42),
                NULL,
                V::Int(i32::MIN as i64),
                V::Int(i32::MAX as i64),
                V::Int(0),
                V::Int(-1),
                V::Int(1),
                V::Int(2),
                V::Int(3),
            ],
        },
        Column {
            name: "c_i64",
            logical: L::I64,
            postgres: Some("bigint"),
            mariadb: Some("BIGINT"),
            sqlite: Some("BIGINT"),
            values: [
                V::Int(1_234_567_890_123),
                NULL,
                V::Int(i64::MIN),
                V::Int(i64::MAX),
                V::Int(0),
                // 2^53 + 1: no float detour may touch it.
                V::Int(9_007_199_254_740_993),
                V::Int(1),
                V::Int(2),
                V::Int(3),
            ],
        },
        Column {
            name: "c_dec",
            logical: L::Dec(20, 6),
            postgres: Some("numeric(20,6)"),
            mariadb: Some("DECIMAL(20,6)"),
            sqlite: Some("DECIMAL_TEXT(20,6)"),
            values: [
                V::Dec("12345.6789"),
                NULL,
                V::Dec("-99999999999999.999999"),
                V::Dec("99999999999999.999999"),
                V::Dec("0.000001"),
                V::Dec("-0.000001"),
                V::Dec("1"),
                V::Dec("2"),
                V::Dec("3"),
            ],
        },
        Column {
            name: "c_dec38",
            logical: L::Dec(38, 0),
            postgres: Some("numeric(38,0)"),
            mariadb: Some("DECIMAL(38,0)"),
            sqlite: Some("DECIMAL_TEXT(38,0)"),
            values: [
                V::Dec("1"),
                NULL,
                V::Dec(minus_nines38),
                V::Dec(nines38),
                V::Dec("0"),
                V::Dec("12345678901234567890123456789012345678"),
                V::Dec("1"),
                V::Dec("2"),
                V::Dec("3"),
            ],
        },
        Column {
            // SQLite stores this one with NUMERIC affinity (INTEGER or REAL): exact up to 15
            // significant digits.
            name: "c_dec_small",
            logical: L::Dec(10, 2),
            postgres: Some("numeric(10,2)"),
            mariadb: Some("DECIMAL(10,2)"),
            sqlite: Some("NUMERIC(10,2)"),
            values: [
                V::Dec("12.5"),
                NULL,
                V::Dec("-99999999.99"),
                V::Dec("99999999.99"),
                V::Dec("0.01"),
                V::Dec("0.1"),
                V::Dec("1"),
                V::Dec("2"),
                V::Dec("3"),
            ],
        },
        Column {
            name: "c_f64",
            logical: L::F64,
            postgres: Some("double precision"),
            mariadb: Some("DOUBLE"),
            sqlite: Some("REAL"),
            values: [
                V::F64(0.1),
                NULL,
                V::F64(-f64::MAX),
                V::F64(f64::MAX),
                V::F64(f64::MIN_POSITIVE),
                V::F64(0.1 + 0.2),
                V::F64(5e-324),
                V::F64(f64::INFINITY),
                V::F64(f64::NEG_INFINITY),
            ],
        },
        Column {
            name: "c_f32",
            logical: L::F32,
            postgres: Some("real"),
            mariadb: Some("FLOAT"),
            sqlite: Some("FLOAT4"),
            values: [
                V::F32(0.1),
                NULL,
                V::F32(-f32::MAX),
                V::F32(f32::MAX),
                V::F32(f32::MIN_POSITIVE),
                V::F32(16_777_216.0),
                V::F32(f32::from_bits(1)),
                V::F32(f32::NEG_INFINITY),
                V::F32(f32::INFINITY),
            ],
        },
        Column {
            name: "c_text",
            logical: L::Text,
            postgres: Some("text"),
            mariadb: Some("LONGTEXT"),
            sqlite: Some("TEXT"),
            values: [
                t("hello"),
                NULL,
                t(""),
                V::Text(long_text),
                t("😀 Ünïcödé 日本語 עברית e\u{301} \u{200B}zero-width \u{202E}rtl\u{202C} 𝄞"),
                t("quote ' dq \" bs \\ nl \n cr \r tab \t ctrl \u{1} del \u{7f} trailing space "),
                t("x"),
                t("y"),
                t("z"),
            ],
        },
        Column {
            name: "c_bool",
            logical: L::Bool,
            postgres: Some("boolean"),
            mariadb: Some("BOOLEAN"),
            sqlite: Some("BOOLEAN"),
            values: [
                V::Bool(true),
                NULL,
                V::Bool(false),
                V::Bool(true),
                V::Bool(false),
                V::Bool(true),
                NULL,
                NULL,
                NULL,
            ],
        },
        Column {
            name: "c_ts",
            logical: L::Ts,
            postgres: Some("timestamp"),
            mariadb: Some("DATETIME(6)"),
            sqlite: Some("TIMESTAMP"),
            values: [
                V::Ts("2024-01-15 10:30:00"),
                NULL,
                V::Ts("1000-01-01 00:00:00"),
                V::Ts("9999-12-31 23:59:59.999999"),
                V::Ts("2024-02-29 12:34:56.000001"),
                V::Ts("1969-12-31 23:59:59.999999"),
                V::Ts("0001-01-01 00:00:00"),
                V::Ts("10000-01-01 00:00:00"),
                NULL,
            ],
        },
        Column {
            // MariaDB's TIMESTAMP holds 1970-01-01 00:00:01 to 2038-01-19 03:14:07.999999 UTC.
            name: "c_tstz",
            logical: L::TsTz,
            postgres: Some("timestamptz"),
            mariadb: Some("TIMESTAMP(6) NULL DEFAULT NULL"),
            sqlite: Some("TIMESTAMPTZ"),
            values: [
                V::TsTz("2024-01-15 10:30:00+00:00"),
                NULL,
                V::TsTz("1970-01-01 00:00:01+00:00"),
                V::TsTz("2038-01-19 03:14:07.999999+00:00"),
                V::TsTz("2024-06-30 18:30:00.25+02:00"),
                V::TsTz("2024-02-29 23:59:59.123456+05:30"),
                V::TsTz("0001-01-01 00:00:00+00:00"),
                V::TsTz("9999-12-31 23:59:59.999999-08:00"),
                NULL,
            ],
        },
        Column {
            name: "c_date",
            logical: L::Date,
            postgres: Some("date"),
            mariadb: Some("DATE"),
            sqlite: Some("DATE"),
            values: [
                V::Date("2024-01-15"),
                NULL,
                V::Date("1000-01-01"),
                V::Date("9999-12-31"),
                V::Date("2024-02-29"),
                V::Date("1969-12-31"),
                V::Date("0001-01-01"),
                V::Date("10000-01-01"),
                NULL,
            ],
        },
        Column {
            name: "c_time",
            logical: L::Time,
            postgres: Some("time"),
            mariadb: Some("TIME(6)"),
            sqlite: Some("TIME"),
            values: [
                V::Time("10:30:00"),
                NULL,
                V::Time("00:00:00"),
                V::Time("23:59:59.999999"),
                V::Time("12:00:00.5"),
                V::Time("00:00:00.000001"),
                NULL,
                NULL,
                NULL,
            ],
        },
        Column {
            name: "c_uuid",
            logical: L::Uuid,
            postgres: Some("uuid"),
            mariadb: Some("UUID"),
            sqlite: Some("UUID"),
            values: [
                V::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                NULL,
                V::Uuid("00000000-0000-0000-0000-000000000000"),
                V::Uuid("ffffffff-ffff-ffff-ffff-ffffffffffff"),
                // Upper case in: canonical lower case out.
                V::Uuid("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12"),
                V::Uuid("123e4567-e89b-12d3-a456-426614174000"),
                NULL,
                NULL,
                NULL,
            ],
        },
        Column {
            name: "c_json",
            logical: L::Json,
            postgres: Some("jsonb"),
            mariadb: Some("JSON"),
            sqlite: Some("JSON"),
            values: [
                V::Json(r#"{"b": 1, "a": [1, 2.5, null, true, false]}"#),
                NULL,
                V::Json("{}"),
                V::Json(
                    r#"{"nested": {"deeper": {"list": [[], {}, [1, [2, [3]]]]}}, "escapes": "quote \" bs \\ nl \n tab \t \u00e9 \ud83d\ude00", "empty": ""}"#,
                ),
                V::Json(
                    r#"{"emoji": "😀", "ünï": "日本語", "big": 9007199254740993, "neg": -1.5e-10}"#,
                ),
                // The JSON document `null` is a value, not SQL NULL.
                V::Json("null"),
                V::Json("[]"),
                V::Json(r#""""#),
                NULL,
            ],
        },
        Column {
            // PostgreSQL's json keeps the text as written; MariaDB's JSON spelled out.
            name: "c_json_text",
            logical: L::Json,
            postgres: Some("json"),
            mariadb: Some("LONGTEXT CHECK (json_valid(c_json_text))"),
            sqlite: Some("JSON_TEXT"),
            values: [
                V::Json(r#"{"z": 1,   "a": {"y": [ 1 , 2 ]}}"#),
                NULL,
                V::Json("[]"),
                V::Json(r#""a string document with \"quotes\" and 😀""#),
                V::Json("3.25"),
                V::Json("true"),
                V::Json("false"),
                V::Json("-0.5"),
                NULL,
            ],
        },
        Column {
            name: "c_bytes",
            logical: L::Bin,
            postgres: Some("bytea"),
            mariadb: Some("LONGBLOB"),
            sqlite: Some("BLOB"),
            values: [
                V::Bytes(b"hello".to_vec()),
                NULL,
                V::Bytes(Vec::new()),
                V::Bytes(all_bytes),
                V::Bytes(vec![0]),
                V::Bytes("😀 not necessarily text \u{0} ".as_bytes().to_vec()),
                NULL,
                NULL,
                NULL,
            ],
        },
        Column {
            // Documented: arrays are read as JSON (to_json) and land as json everywhere.
            name: "c_int_array",
            logical: L::Json,
            postgres: Some("integer[]"),
            mariadb: None,
            sqlite: None,
            values: [
                V::Array("{1,2,3}", "[1,2,3]"),
                NULL,
                V::Array("{}", "[]"),
                V::Array("{{1,2},{3,4}}", "[[1,2],[3,4]]"),
                V::Array(
                    "{NULL,-2147483648,2147483647}",
                    "[null,-2147483648,2147483647]",
                ),
                V::Array("{0}", "[0]"),
                NULL,
                NULL,
                NULL,
            ],
        },
        Column {
            name: "c_text_array",
            logical: L::Json,
            postgres: Some("text[]"),
            mariadb: None,
            sqlite: None,
            values: [
                V::Array(r#"{"a","b c"}"#, r#"["a","b c"]"#),
                NULL,
                V::Array(r#"{""}"#, r#"[""]"#),
                V::Array(r#"{NULL,"NULL"}"#, r#"[null,"NULL"]"#),
                V::Array(
                    r#"{"😀","Ünïcödé","quote\"","back\\slash","com,ma"}"#,
                    r#"["😀","Ünïcödé","quote\"","back\\slash","com,ma"]"#,
                ),
                V::Array("{}", "[]"),
                NULL,
                NULL,
                NULL,
            ],
        },
        Column {
            // Documented: an unconstrained numeric is read as its exact text, so no digit is
            // lost; it lands as text.
            name: "c_numeric_free",
            logical: L::Text,
            postgres: Some("numeric"),
            mariadb: None,
            sqlite: None,
            values: [
                t("123.4500"),
                NULL,
                t("NaN"),
                t("0.00000000000000000000000000000000000000000000000001"),
                t("-1000000000000000000000000000000000000000000000000000"),
                t("0"),
                NULL,
                NULL,
                NULL,
            ],
        },
        Column {
            // Documented: MariaDB's bigint unsigned reads as decimal(20,0), keeping 2^64 - 1.
            name: "c_u64",
            logical: L::Dec(20, 0),
            postgres: None,
            mariadb: Some("BIGINT UNSIGNED"),
            sqlite: None,
            values: [
                V::Dec("1"),
                NULL,
                V::Dec("0"),
                V::Dec("18446744073709551615"),
                V::Dec("9223372036854775808"),
                V::Dec("42"),
                NULL,
                NULL,
                NULL,
            ],
        },
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sys {
    Postgres,
    Mariadb,
    Sqlite,
}

impl Sys {
    fn source_type(self, c: &Column) -> Option<&'static str> {
        match self {
            Sys::Postgres => c.postgres,
            Sys::Mariadb => c.mariadb,
            Sys::Sqlite => c.sqlite,
        }
    }
}

impl fmt::Display for Sys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sys::Postgres => "postgres",
            Sys::Mariadb => "mariadb",
            Sys::Sqlite => "sqlite",
        })
    }
}

/// The column type a destination connector creates for a logical type: the "tables the
/// connector creates" of each connector's README.
fn created_type(sys: Sys, l: L) -> String {
    match sys {
        Sys::Postgres => match l {
            L::Bool => "boolean".into(),
            L::I32 => "integer".into(),
            L::I64 => "bigint".into(),
            L::F32 => "real".into(),
            L::F64 => "double precision".into(),
            L::Dec(p, s) => format!("numeric({p},{s})"),
            L::Text => "text".into(),
            L::Bin => "bytea".into(),
            L::Date => "date".into(),
            L::Time => "time without time zone".into(),
            L::Ts => "timestamp without time zone".into(),
            L::TsTz => "timestamp with time zone".into(),
            L::Uuid => "uuid".into(),
            L::Json => "jsonb".into(),
        },
        Sys::Mariadb => match l {
            L::Bool => "tinyint(1)".into(),
            L::I32 => "int(11)".into(),
            L::I64 => "bigint(20)".into(),
            L::F32 => "float".into(),
            L::F64 => "double".into(),
            L::Dec(p, s) => format!("decimal({p},{s})"),
            L::Text => "longtext".into(),
            L::Bin => "longblob".into(),
            L::Date => "date".into(),
            L::Time => "time(6)".into(),
            // No time zone in MariaDB: DATETIME(6) holding UTC.
            L::Ts | L::TsTz => "datetime(6)".into(),
            L::Uuid => "uuid".into(),
            // MariaDB's JSON is LONGTEXT with a json_valid check.
            L::Json => "longtext json_valid".into(),
        },
        Sys::Sqlite => match l {
            L::Bool => "BOOLEAN".into(),
            L::I32 => "INT4".into(),
            L::I64 => "INTEGER".into(),
            L::F32 => "FLOAT4".into(),
            L::F64 => "REAL".into(),
            L::Dec(p, s) if p <= 15 => format!("NUMERIC({p},{s})"),
            L::Dec(p, s) => format!("DECIMAL_TEXT({p},{s})"),
            L::Text => "TEXT".into(),
            L::Bin => "BLOB".into(),
            L::Date => "DATE".into(),
            L::Time => "TIME".into(),
            L::Ts => "TIMESTAMP".into(),
            L::TsTz => "TIMESTAMPTZ".into(),
            L::Uuid => "UUID".into(),
            L::Json => "JSON_TEXT".into(),
        },
    }
}

/// The logical type a column created for `l` reads back as: the same, except that MariaDB's
/// DATETIME(6) for a timestamp with time zone reads back as a timestamp (same UTC value).
fn landed(sys: Sys, l: L) -> L {
    match (sys, l) {
        (Sys::Mariadb, L::TsTz) => L::Ts,
        _ => l,
    }
}

// ---------------------------------------------------------------------------------------------
// Normalized values
// ---------------------------------------------------------------------------------------------

/// A value read back, in a form where equal means "the same value".
#[derive(Debug)]
enum N {
    Null,
    Int(i64),
    /// Exact decimal text without trailing zeros (`-0` is `0`).
    Dec(String),
    F64(f64),
    F32(f32),
    Text(String),
    Bool(bool),
    Bytes(Vec<u8>),
    /// Days since 1970-01-01.
    Date(i64),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds since 1970-01-01 00:00:00 (UTC for timestamps with time zone).
    Instant(i64),
    Uuid(String),
    Json(serde_json::Value),
}

impl PartialEq for N {
    fn eq(&self, other: &N) -> bool {
        use N::*;
        match (self, other) {
            (Null, Null) => true,
            (Int(a), Int(b)) => a == b,
            (Dec(a), Dec(b)) | (Text(a), Text(b)) | (Uuid(a), Uuid(b)) => a == b,
            (F64(a), F64(b)) => a.to_bits() == b.to_bits(),
            (F32(a), F32(b)) => a.to_bits() == b.to_bits(),
            (Bool(a), Bool(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (Date(a), Date(b)) | (Time(a), Time(b)) | (Instant(a), Instant(b)) => a == b,
            (Json(a), Json(b)) => a == b,
            _ => false,
        }
    }
}

fn short(n: &N) -> String {
    let s = format!("{n:?}");
    if s.chars().count() > 200 {
        format!(
            "{}... ({} chars)",
            s.chars().take(200).collect::<String>(),
            s.chars().count()
        )
    } else {
        s
    }
}

fn norm_decimal(s: &str) -> String {
    let s = s.trim();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let body = if frac.is_empty() {
        int.to_owned()
    } else {
        format!("{int}.{frac}")
    };
    if neg && body != "0" {
        format!("-{body}")
    } else {
        body
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `[+]YYYY-MM-DD` (any number of year digits) as days since 1970-01-01.
fn parse_days(s: &str) -> i64 {
    let s = s.trim().trim_start_matches('+');
    let parts: Vec<i64> = s
        .splitn(3, '-')
        .map(|p| p.parse().unwrap_or_else(|_| panic!("not a date: {s}")))
        .collect();
    assert_eq!(parts.len(), 3, "not a date: {s}");
    days_from_civil(parts[0], parts[1], parts[2])
}

/// `HH:MM:SS[.f]` as microseconds since midnight.
fn parse_micros_of_day(s: &str) -> i64 {
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let p: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().unwrap_or_else(|_| panic!("not a time: {s}")))
        .collect();
    assert!(p.len() == 3 && frac.len() <= 6, "not a time: {s}");
    let frac_us: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().unwrap()
    };
    (p[0] * 3600 + p[1] * 60 + p[2]) * 1_000_000 + frac_us
}

/// `[+]YYYY-MM-DD[ T]HH:MM:SS[.f][Z|±HH[:MM]]` as microseconds since the epoch; an offset is
/// applied, giving UTC.
fn parse_instant(s: &str) -> i64 {
    let s = s.trim();
    let sep = s
        .find([' ', 'T'])
        .unwrap_or_else(|| panic!("not a timestamp: {s}"));
    let (date, time) = (&s[..sep], &s[sep + 1..]);
    let (time, offset_us) = if let Some(t) = time.strip_suffix('Z') {
        (t, 0)
    } else if let Some(i) = time.find(['+', '-']) {
        let (t, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let off = &off[1..];
        let (h, m) = off.split_once(':').unwrap_or((off, "0"));
        let minutes = h.parse::<i64>().unwrap() * 60 + m.parse::<i64>().unwrap();
        (t, sign * minutes * 60_000_000)
    } else {
        (time, 0)
    };
    parse_days(date) * 86_400_000_000 + parse_micros_of_day(time) - offset_us
}

/// Microseconds since the epoch as `YYYY-MM-DD HH:MM:SS.ffffff`.
fn format_instant(us: i64) -> String {
    let days = us.div_euclid(86_400_000_000);
    let rest = us.rem_euclid(86_400_000_000);
    let (y, m, d) = civil_from_days(days);
    let secs = rest / 1_000_000;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        rest % 1_000_000
    )
}

/// The value `v` should have when read back from a column of logical type `l`.
fn expect(v: &V, l: L) -> N {
    match (v, l) {
        (V::Null, _) => N::Null,
        (V::Int(i), L::I32 | L::I64) => N::Int(*i),
        (V::Dec(s), L::Dec(..)) => N::Dec(norm_decimal(s)),
        (V::F64(f), L::F64) => N::F64(*f),
        (V::F32(f), L::F32) => N::F32(*f),
        (V::Text(s), L::Text) => N::Text(s.clone()),
        (V::Bool(b), L::Bool) => N::Bool(*b),
        (V::Ts(s), L::Ts) => N::Instant(parse_instant(s)),
        // A timestamp with time zone, wherever it lands, is the same UTC instant.
        (V::TsTz(s), L::Ts | L::TsTz) => N::Instant(parse_instant(s)),
        (V::Date(s), L::Date) => N::Date(parse_days(s)),
        (V::Time(s), L::Time) => N::Time(parse_micros_of_day(s)),
        (V::Uuid(s), L::Uuid) => N::Uuid(s.to_ascii_lowercase()),
        (V::Json(s), L::Json) => N::Json(json(s)),
        (V::Array(_, s), L::Json) => N::Json(json(s)),
        (V::Bytes(b), L::Bin) => N::Bytes(b.clone()),
        (v, l) => panic!("the table gives {v:?} to a {l:?} column"),
    }
}

// ---------------------------------------------------------------------------------------------
// The three systems
// ---------------------------------------------------------------------------------------------

enum Db {
    Postgres(TempDatabase),
    Mariadb(TempDatabase),
    Sqlite(PathBuf),
}

/// A database of `sys` for one test, or `None` when its server is not reachable (outside CI).
fn database(sys: Sys, dir: &Path, role: &str) -> Option<Db> {
    Some(match sys {
        Sys::Postgres => Db::Postgres(postgres_database(&format!("types_{role}"))?),
        Sys::Mariadb => Db::Mariadb(mysql_database(&format!("types_{role}"))?),
        Sys::Sqlite => Db::Sqlite(dir.join(format!("{role}.db"))),
    })
}

/// A SQLite value by storage class.
#[derive(Debug)]
enum Lite {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Db {
    fn connection_toml(&self, name: &str) -> String {
        let (connector, config) = match self {
            Db::Postgres(db) => ("postgres", format!("url = \"{}\"", db.url)),
            Db::Mariadb(db) => ("mysql", format!("url = \"{}\"", db.url)),
            Db::Sqlite(p) => ("sqlite", format!("path = \"{}\"", p.display())),
        };
        format!("[connections.{name}]\nconnector = \"{connector}\"\nconfig = {{ {config} }}\n\n")
    }

    async fn pg(&self) -> sqlx::PgConnection {
        let Db::Postgres(db) = self else {
            unreachable!()
        };
        sqlx::PgConnection::connect(&db.url).await.unwrap()
    }

    async fn my(&self) -> sqlx::MySqlConnection {
        let Db::Mariadb(db) = self else {
            unreachable!()
        };
        let mut c = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
        sqlx::query(
            "SET time_zone = '+00:00', sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE'",
        )
        .execute(&mut c)
        .await
        .unwrap();
        c
    }

    async fn lite(&self) -> sqlx::SqliteConnection {
        let Db::Sqlite(p) = self else { unreachable!() };
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(p)
            .create_if_missing(true);
        sqlx::SqliteConnection::connect_with(&opts).await.unwrap()
    }

    async fn exec(&self, statements: &[String]) {
        macro_rules! each {
            ($c:expr) => {{
                let mut c = $c;
                for s in statements {
                    sqlx::query(s)
                        .execute(&mut c)
                        .await
                        .unwrap_or_else(|e| panic!("{s}: {e}"));
                }
            }};
        }
        match self {
            Db::Postgres(_) => each!(self.pg().await),
            Db::Mariadb(_) => each!(self.my().await),
            Db::Sqlite(_) => each!(self.lite().await),
        }
    }

    fn quote(&self, name: &str) -> String {
        match self {
            Db::Mariadb(_) => format!("`{name}`"),
            _ => format!("\"{name}\""),
        }
    }

    /// Creates `table` with an `id` key and `cols` (name, native type), and inserts `rows`
    /// (id, one value per column) with bound parameters.
    async fn create_and_fill(&self, table: &str, cols: &[(&str, &str)], rows: &[(i64, Vec<&V>)]) {
        let id_type = match self {
            Db::Postgres(_) => "bigint PRIMARY KEY",
            Db::Mariadb(_) => "BIGINT PRIMARY KEY",
            Db::Sqlite(_) => "INTEGER PRIMARY KEY",
        };
        let defs: Vec<String> = cols
            .iter()
            .map(|(n, ty)| format!("{} {ty}", self.quote(n)))
            .collect();
        let suffix = if let Db::Mariadb(_) = self {
            " DEFAULT CHARSET=utf8mb4"
        } else {
            ""
        };
        self.exec(&[format!(
            "CREATE TABLE {table} (id {id_type}, {}){suffix}",
            defs.join(", ")
        )])
        .await;

        let names: Vec<String> = cols.iter().map(|(n, _)| self.quote(n)).collect();
        let placeholders: Vec<String> = match self {
            Db::Postgres(_) => cols
                .iter()
                .enumerate()
                .map(|(i, (_, ty))| format!("${}::{ty}", i + 2))
                .collect(),
            _ => cols.iter().map(|_| "?".to_owned()).collect(),
        };
        let first = if let Db::Postgres(_) = self {
            "$1"
        } else {
            "?"
        };
        let sql = format!(
            "INSERT INTO {table} (id, {}) VALUES ({first}, {})",
            names.join(", "),
            placeholders.join(", ")
        );
        match self {
            Db::Postgres(_) => {
                let mut c = self.pg().await;
                for (id, values) in rows {
                    let mut q = sqlx::query(&sql).bind(*id);
                    for v in values {
                        q = match v {
                            V::Bytes(b) => q.bind(b.clone()),
                            v => q.bind(pg_text(v)),
                        };
                    }
                    q.execute(&mut c)
                        .await
                        .unwrap_or_else(|e| panic!("row {id}: {e}"));
                }
            }
            Db::Mariadb(_) => {
                let mut c = self.my().await;
                for (id, values) in rows {
                    let mut q = sqlx::query(&sql).bind(*id);
                    for v in values {
                        q = match v {
                            V::Null => q.bind(None::<String>),
                            V::Int(i) => q.bind(*i),
                            V::F64(f) => q.bind(*f),
                            V::F32(f) => q.bind(*f),
                            V::Bool(b) => q.bind(*b),
                            V::Bytes(b) => q.bind(b.clone()),
                            // MariaDB takes no offsets in literals: the UTC time, in a UTC session.
                            V::TsTz(s) => q.bind(format_instant(parse_instant(s))),
                            V::Dec(s)
                            | V::Ts(s)
                            | V::Date(s)
                            | V::Time(s)
                            | V::Uuid(s)
                            | V::Json(s) => q.bind(s.to_string()),
                            V::Text(s) => q.bind(s.clone()),
                            V::Array(..) => unreachable!("MariaDB has no arrays"),
                        };
                    }
                    q.execute(&mut c)
                        .await
                        .unwrap_or_else(|e| panic!("row {id}: {e}"));
                }
            }
            Db::Sqlite(_) => {
                let mut c = self.lite().await;
                for (id, values) in rows {
                    let mut q = sqlx::query(&sql).bind(*id);
                    for v in values {
                        q = match v {
                            V::Null => q.bind(None::<String>),
                            V::Int(i) => q.bind(*i),
                            V::F64(f) => q.bind(*f),
                            V::F32(f) => q.bind(*f as f64),
                            V::Bool(b) => q.bind(*b as i64),
                            V::Bytes(b) => q.bind(b.clone()),
                            // The connector's text forms; years past 9999 carry a sign.
                            V::Ts(s) | V::TsTz(s) | V::Date(s) if s.find('-') == Some(5) => {
                                q.bind(format!("+{s}"))
                            }
                            V::Dec(s)
                            | V::Ts(s)
                            | V::TsTz(s)
                            | V::Date(s)
                            | V::Time(s)
                            | V::Uuid(s)
                            | V::Json(s) => q.bind(s.to_string()),
                            V::Text(s) => q.bind(s.clone()),
                            V::Array(..) => unreachable!("SQLite has no arrays"),
                        };
                    }
                    q.execute(&mut c)
                        .await
                        .unwrap_or_else(|e| panic!("row {id}: {e}"));
                }
            }
        }
    }

    /// Each column's type as the system reports it.
    async fn column_types(&self, table: &str) -> BTreeMap<String, String> {
        match self {
            Db::Postgres(_) => {
                let mut c = self.pg().await;
                sqlx::query(
                    "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
                     WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
                )
                .bind(table)
                .fetch_all(&mut c)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
            }
            Db::Mariadb(_) => {
                let mut c = self.my().await;
                let checks: Vec<String> = sqlx::query(
                    "SELECT CONVERT(CHECK_CLAUSE USING utf8mb4) FROM information_schema.CHECK_CONSTRAINTS
                     WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = ?",
                )
                .bind(table)
                .fetch_all(&mut c)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
                sqlx::query(
                    "SELECT CONVERT(COLUMN_NAME USING utf8mb4), CONVERT(COLUMN_TYPE USING utf8mb4)
                     FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
                )
                .bind(table)
                .fetch_all(&mut c)
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    let name: String = r.get(0);
                    let mut ty: String = r.get(1);
                    if checks.iter().any(|c| c.contains(&format!("json_valid(`{name}`)"))) {
                        ty.push_str(" json_valid");
                    }
                    (name, ty)
                })
                .collect()
            }
            Db::Sqlite(_) => {
                let mut c = self.lite().await;
                sqlx::query("SELECT name, type FROM pragma_table_info(?)")
                    .bind(table)
                    .fetch_all(&mut c)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect()
            }
        }
    }

    /// Every row of `table` by id, each column read as logical type `l` and normalized.
    async fn read(&self, table: &str, cols: &[(&str, L)]) -> BTreeMap<i64, Vec<N>> {
        let mut out = BTreeMap::new();
        match self {
            Db::Postgres(_) => {
                let exprs: Vec<String> = cols
                    .iter()
                    .map(|(n, l)| {
                        let c = format!("\"{n}\"");
                        match l {
                            L::I32 | L::I64 => format!("{c}::bigint"),
                            L::Dec(..) | L::Text | L::Uuid => format!("{c}::text"),
                            L::F64 => format!("{c}::float8"),
                            L::F32 => format!("{c}::float4"),
                            L::Bool | L::Bin => c,
                            L::Ts | L::TsTz | L::Time => {
                                format!("(extract(epoch from {c}) * 1000000)::bigint")
                            }
                            L::Date => format!("({c} - date '1970-01-01')::bigint"),
                            L::Json => format!("to_json({c})::text"),
                        }
                    })
                    .collect();
                let sql = format!("SELECT id, {} FROM {table} ORDER BY id", exprs.join(", "));
                let mut c = self.pg().await;
                for r in sqlx::query(&sql)
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                {
                    let row = cols
                        .iter()
                        .enumerate()
                        .map(|(i, (_, l))| {
                            let i = i + 1;
                            macro_rules! get {
                                ($t:ty) => {
                                    r.get::<Option<$t>, _>(i)
                                };
                            }
                            let n = match l {
                                L::I32 | L::I64 => get!(i64).map(N::Int),
                                L::Dec(..) => get!(String).map(|s| N::Dec(norm_decimal(&s))),
                                L::Text => get!(String).map(N::Text),
                                L::Uuid => get!(String).map(N::Uuid),
                                L::F64 => get!(f64).map(N::F64),
                                L::F32 => get!(f32).map(N::F32),
                                L::Bool => get!(bool).map(N::Bool),
                                L::Bin => get!(Vec<u8>).map(N::Bytes),
                                L::Ts | L::TsTz => get!(i64).map(N::Instant),
                                L::Time => get!(i64).map(N::Time),
                                L::Date => get!(i64).map(N::Date),
                                L::Json => get!(String).map(|s| N::Json(json(&s))),
                            };
                            n.unwrap_or(N::Null)
                        })
                        .collect();
                    out.insert(r.get::<i64, _>(0), row);
                }
            }
            Db::Mariadb(_) => {
                let exprs: Vec<String> = cols
                    .iter()
                    .map(|(n, l)| {
                        let c = format!("`{n}`");
                        match l {
                            L::I32 | L::I64 | L::Bool => format!("CAST({c} AS SIGNED)"),
                            L::Dec(..) | L::Uuid => format!("CAST({c} AS CHAR)"),
                            L::Text | L::Json => format!("CONVERT({c} USING utf8mb4)"),
                            L::F64 | L::F32 | L::Bin => c,
                            L::Ts | L::TsTz => format!("TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {c})"),
                            L::Date => format!("CAST(DATEDIFF({c}, '1970-01-01') AS SIGNED)"),
                            L::Time => format!(
                                "CAST(HOUR({c}) * 3600000000 + MINUTE({c}) * 60000000 + SECOND({c}) * 1000000 + MICROSECOND({c}) AS SIGNED)"
                            ),
                        }
                    })
                    .collect();
                let sql = format!(
                    "SELECT CAST(id AS SIGNED), {} FROM {table} ORDER BY id",
                    exprs.join(", ")
                );
                let mut c = self.my().await;
                for r in sqlx::query(&sql)
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                {
                    let row = cols
                        .iter()
                        .enumerate()
                        .map(|(i, (name, l))| {
                            let i = i + 1;
                            macro_rules! get {
                                ($t:ty) => {
                                    r.get::<Option<$t>, _>(i)
                                };
                            }
                            let n = match l {
                                L::I32 | L::I64 => get!(i64).map(N::Int),
                                L::Bool => get!(i64).map(|b| {
                                    assert!(b == 0 || b == 1, "{name}: boolean stored as {b}");
                                    N::Bool(b == 1)
                                }),
                                L::Dec(..) => get!(String).map(|s| N::Dec(norm_decimal(&s))),
                                L::Uuid => get!(String).map(N::Uuid),
                                L::Text => get!(String).map(N::Text),
                                L::Json => get!(String).map(|s| N::Json(json(&s))),
                                L::F64 => get!(f64).map(N::F64),
                                L::F32 => get!(f32).map(N::F32),
                                L::Bin => get!(Vec<u8>).map(N::Bytes),
                                L::Ts | L::TsTz => get!(i64).map(N::Instant),
                                L::Date => get!(i64).map(N::Date),
                                L::Time => get!(i64).map(N::Time),
                            };
                            n.unwrap_or(N::Null)
                        })
                        .collect();
                    out.insert(r.get::<i64, _>(0), row);
                }
            }
            Db::Sqlite(_) => {
                let names: Vec<String> = cols.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                let sql = format!("SELECT id, {} FROM {table} ORDER BY id", names.join(", "));
                let mut c = self.lite().await;
                for r in sqlx::query(&sql)
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                {
                    let row = cols
                        .iter()
                        .enumerate()
                        .map(|(i, (name, l))| lite_value(&lite_raw(&r, i + 1), *l, name))
                        .collect();
                    out.insert(r.get::<i64, _>(0), row);
                }
            }
        }
        out
    }
}

/// The text PostgreSQL casts to the column's type (everything but bytea is bound as text).
fn pg_text(v: &V) -> Option<String> {
    let float = |f: f64, text: String| {
        if f.is_infinite() {
            if f > 0.0 {
                "Infinity".into()
            } else {
                "-Infinity".into()
            }
        } else {
            text
        }
    };
    Some(match v {
        V::Null => return None,
        V::Int(i) => i.to_string(),
        V::F64(f) => float(*f, format!("{f:e}")),
        V::F32(f) => float(*f as f64, format!("{f:e}")),
        V::Bool(b) => b.to_string(),
        V::Text(s) => s.clone(),
        V::Dec(s) | V::Ts(s) | V::TsTz(s) | V::Date(s) | V::Time(s) | V::Uuid(s) | V::Json(s) => {
            s.to_string()
        }
        V::Array(pg, _) => pg.to_string(),
        V::Bytes(_) => unreachable!(),
    })
}

fn lite_raw(r: &sqlx::sqlite::SqliteRow, i: usize) -> Lite {
    let raw = r.try_get_raw(i).unwrap();
    if raw.is_null() {
        return Lite::Null;
    }
    match raw.type_info().name() {
        "INTEGER" => Lite::Int(r.get(i)),
        "REAL" => Lite::Real(r.get(i)),
        "BLOB" => Lite::Blob(r.get(i)),
        _ => Lite::Text(r.get(i)),
    }
}

/// A stored SQLite value read as logical type `l`: the storage forms the SQLite README lists.
fn lite_value(v: &Lite, l: L, name: &str) -> N {
    match (v, l) {
        (Lite::Null, _) => N::Null,
        (Lite::Int(i), L::I32 | L::I64) => N::Int(*i),
        (Lite::Int(i), L::Bool) if *i == 0 || *i == 1 => N::Bool(*i == 1),
        (Lite::Int(i), L::Dec(..)) => N::Dec(norm_decimal(&i.to_string())),
        (Lite::Real(f), L::Dec(..)) => N::Dec(norm_decimal(&format!("{f}"))),
        (Lite::Text(s), L::Dec(..)) => N::Dec(norm_decimal(s)),
        (Lite::Real(f), L::F64) => N::F64(*f),
        (Lite::Real(f), L::F32) => {
            assert_eq!(*f as f32 as f64, *f, "{name}: REAL {f} is not a float32");
            N::F32(*f as f32)
        }
        (Lite::Text(s), L::Text) => N::Text(s.clone()),
        (Lite::Text(s), L::Uuid) => N::Uuid(s.clone()),
        (Lite::Text(s), L::Json) => N::Json(json(s)),
        (Lite::Blob(b), L::Bin) => N::Bytes(b.clone()),
        (Lite::Text(s), L::Ts | L::TsTz) => N::Instant(parse_instant(s)),
        (Lite::Text(s), L::Date) => N::Date(parse_days(s)),
        (Lite::Text(s), L::Time) => N::Time(parse_micros_of_day(s)),
        (v, l) => panic!("{name}: SQLite holds {v:?} in a {l:?} column"),
    }
}

// ---------------------------------------------------------------------------------------------
// Running lockstep
// ---------------------------------------------------------------------------------------------

fn write_config(dir: &Path, connections: &[(&str, &Db)], syncs: &str) {
    let mut text = "[state]\nurl = \"sqlite://state.db\"\n\n".to_owned();
    for (name, db) in connections {
        text.push_str(&db.connection_toml(name));
    }
    text.push_str(syncs);
    std::fs::write(dir.join("lockstep.toml"), text).unwrap();
}

/// `lockstep run SYNC --output json`: whether it succeeded, and its report.
fn run_sync(dir: &Path, sync: &str) -> (bool, serde_json::Value, String) {
    let (out, stdout, stderr) = run(lockstep(dir).args(["run", sync, "--output", "json"]));
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("`lockstep run {sync}` printed no JSON ({e}):\n{stdout}\n{stderr}")
    });
    (out.status.success(), report, stderr)
}

fn metric(report: &serde_json::Value, name: &str) -> u64 {
    report["metrics"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no metric {name}: {report}"))
}

fn rejects(dir: &Path, sync: &str) -> Vec<serde_json::Value> {
    let (out, stdout, stderr) =
        run(lockstep(dir).args(["rejects", "list", sync, "--output", "json"]));
    assert!(out.status.success(), "{stderr}");
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    list.as_array().unwrap().clone()
}

// ---------------------------------------------------------------------------------------------
// 1. Round trips in every direction
// ---------------------------------------------------------------------------------------------

/// Syncs the type table from `from` into `to` and back into a new table of `from`, checking
/// the created types and every value on both legs.
fn round_trip(from: Sys, to: Sys) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(src) = database(from, d, "src") else {
        return;
    };
    let Some(dst) = database(to, d, "dst") else {
        return;
    };
    let direction = format!("{from} -> {to}");

    let table = columns();
    let cols: Vec<&Column> = table
        .iter()
        .filter(|c| from.source_type(c).is_some())
        .collect();
    let wide = from != Sys::Mariadb && to != Sys::Mariadb;
    let ids: Vec<(usize, i64)> = BASE_IDS
        .iter()
        .chain(if wide { &WIDE_IDS[..] } else { &[] })
        .copied()
        .enumerate()
        .collect();
    let rows: Vec<(i64, Vec<&V>)> = ids
        .iter()
        .map(|&(i, id)| (id, cols.iter().map(|c| &c.values[i]).collect()))
        .collect();
    let native: Vec<(&str, &str)> = cols
        .iter()
        .map(|c| (c.name, from.source_type(c).unwrap()))
        .collect();

    rt().block_on(src.create_and_fill("types", &native, &rows));
    write_config(
        d,
        &[("src", &src), ("dst", &dst)],
        "[syncs.forward]\nsource = \"src.types\"\ndestination = \"dst.types\"\nmax_rejected = 0\n\n\
         [syncs.back]\nsource = \"dst.types\"\ndestination = \"src.types_back\"\nmax_rejected = 0\n\n\
         [syncs.again]\nsource = \"src.types\"\ndestination = \"dst.types\"\nmax_rejected = 0\nledger = false\n",
    );

    let mut problems = Vec::new();
    for (sync, db, name, table_name) in [
        ("forward", &dst, to, "types"),
        ("back", &src, from, "types_back"),
    ] {
        let (ok, report, stderr) = run_sync(d, sync);
        assert!(
            ok,
            "{direction}: `{sync}` failed: {report}\n{stderr}\nrejects: {:#?}",
            rejects(d, sync)
        );
        let n = rows.len() as u64;
        assert_eq!(
            (
                metric(&report, "read"),
                metric(&report, "added"),
                metric(&report, "rejected")
            ),
            (n, n, 0),
            "{direction}: `{sync}`: {report}"
        );

        // The logical type of each column where it landed: once through the destination for
        // the forward leg, through both systems for the way back.
        let landed_types: Vec<(&str, L)> = cols
            .iter()
            .map(|c| {
                let there = landed(to, c.logical);
                (
                    c.name,
                    if sync == "forward" {
                        there
                    } else {
                        landed(from, there)
                    },
                )
            })
            .collect();

        // The created table has the documented types.
        let types = rt().block_on(db.column_types(table_name));
        assert_eq!(
            types.len(),
            cols.len() + 1,
            "{direction}: `{sync}` created {types:?}"
        );
        assert_eq!(
            types["id"],
            created_type(name, L::I64),
            "{direction}: `{sync}`: id"
        );
        for c in &cols {
            // The type written is the one read from the system the leg started in.
            let written = if sync == "forward" {
                c.logical
            } else {
                landed(to, c.logical)
            };
            let want = created_type(name, written);
            if types.get(c.name) != Some(&want) {
                problems.push(format!(
                    "{direction} `{sync}`: column {} was created as {:?}, the README says {want}",
                    c.name,
                    types.get(c.name)
                ));
            }
        }

        // Every value arrived as declared.
        let got = rt().block_on(db.read(table_name, &landed_types));
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            "{direction}: `{sync}`: the rows differ"
        );
        for (id, values) in &rows {
            for (k, (v, (name, l))) in values.iter().zip(&landed_types).enumerate() {
                let want = expect(v, *l);
                let have = &got[id][k];
                if &want != have {
                    problems.push(format!(
                        "{direction} `{sync}`: row {id}, {name} ({l:?}): expected {}, found {}",
                        short(&want),
                        short(have)
                    ));
                }
            }
        }
    }
    // Without a ledger every record is sent again, and the destination must find each stored
    // value equal to the one it is given: a representation that changed on the way would
    // show up as an update.
    let (ok, again, stderr) = run_sync(d, "again");
    assert!(ok, "{direction}: `again` failed: {again}\n{stderr}");
    let n = rows.len() as u64;
    if (metric(&again, "unchanged"), metric(&again, "updated")) != (n, 0) {
        problems.push(format!(
            "{direction} `again`: the same records written again were not all unchanged: {}",
            again["metrics"]
        ));
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn types_round_trip_sqlite_to_postgres_and_back() {
    round_trip(Sys::Sqlite, Sys::Postgres);
}

#[test]
fn types_round_trip_sqlite_to_mariadb_and_back() {
    round_trip(Sys::Sqlite, Sys::Mariadb);
}

#[test]
fn types_round_trip_postgres_to_sqlite_and_back() {
    round_trip(Sys::Postgres, Sys::Sqlite);
}

#[test]
fn types_round_trip_postgres_to_mariadb_and_back() {
    round_trip(Sys::Postgres, Sys::Mariadb);
}

#[test]
fn types_round_trip_mariadb_to_sqlite_and_back() {
    round_trip(Sys::Mariadb, Sys::Sqlite);
}

#[test]
fn types_round_trip_mariadb_to_postgres_and_back() {
    round_trip(Sys::Mariadb, Sys::Postgres);
}

// ---------------------------------------------------------------------------------------------
// 2. Values a destination cannot hold are rejected with a reason, never truncated
// ---------------------------------------------------------------------------------------------

/// Checks a run that rejected exactly `expected` (key, field, a fragment of the reason) and
/// wrote the `written` others.
fn assert_rejected(dir: &Path, sync: &str, written: u64, expected: &[(&str, &str, &str)]) {
    let (ok, report, stderr) = run_sync(dir, sync);
    assert!(ok, "`{sync}` failed: {report}\n{stderr}");
    assert_eq!(
        (metric(&report, "rejected"), metric(&report, "added")),
        (expected.len() as u64, written),
        "`{sync}`: {report}"
    );
    let mut listed: Vec<(String, String, String)> = rejects(dir, sync)
        .iter()
        .map(|r| {
            assert!(r["raw"].is_object(), "the raw record is kept: {r}");
            (
                r["key"].as_str().unwrap_or_default().to_owned(),
                r["field"].as_str().unwrap_or_default().to_owned(),
                r["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    listed.sort();
    let mut expected = expected.to_vec();
    expected.sort();
    assert_eq!(
        listed.len(),
        expected.len(),
        "`{sync}` rejects: {listed:#?}"
    );
    for ((key, field, reason), (want_key, want_field, fragment)) in listed.iter().zip(&expected) {
        assert_eq!(
            (key.as_str(), field.as_str()),
            (*want_key, *want_field),
            "`{sync}`: {reason}"
        );
        assert!(
            reason.to_lowercase().contains(&fragment.to_lowercase()),
            "`{sync}`, key {key}, field {field}: the reason `{reason}` does not say `{fragment}`"
        );
    }
}

async fn pg_ids(db: &Db, sql: &str) -> Vec<i64> {
    let mut c = db.pg().await;
    sqlx::query_scalar(sql).fetch_all(&mut c).await.unwrap()
}

#[test]
fn values_mariadb_cannot_hold_are_rejected_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(src) = database(Sys::Postgres, d, "src") else {
        return;
    };
    let Some(dst) = database(Sys::Mariadb, d, "dst") else {
        return;
    };
    let ok_row = [
        "'2024-01-01 00:00:00'",
        "'2024-01-01'",
        "'2024-01-01 00:00:00+00'",
        "1.5",
        "1.5",
        "'12:00:00'",
    ];
    // One value out of MariaDB's reach per row; the rest ordinary.
    let rows: [(i64, usize, &str); 7] = [
        (1, 0, "'2024-01-01 00:00:00'"),
        (2, 0, "'0001-01-01 00:00:00'"),
        (3, 1, "'10000-01-01'"),
        (4, 2, "'0999-12-31 23:59:59+00'"),
        (5, 3, "'NaN'"),
        (6, 4, "'-Infinity'"),
        (7, 5, "'24:00:00'"),
    ];
    let mut statements = vec![
        "CREATE TABLE edge (id bigint PRIMARY KEY, c_ts timestamp, c_date date, c_tstz timestamptz, c_f64 double precision, c_f32 real, c_time time)".to_owned(),
        // At the edges of MariaDB's ranges, but inside.
        "INSERT INTO edge VALUES (8, '9999-12-31 23:59:59.999999', '1000-01-01', '1000-01-01 00:00:00+00', 1.7976931348623157e308, 3.4028235e38, '23:59:59.999999')".to_owned(),
        "CREATE TABLE keys (k text PRIMARY KEY, note text)".to_owned(),
        format!("INSERT INTO keys VALUES ('{}', 'fits: 255 characters of 4 bytes'), ('{}', 'one character too many')", "😀".repeat(255), "b".repeat(256)),
        "CREATE TABLE narrow (id bigint PRIMARY KEY, n numeric(38,10), v text, i bigint, ts timestamptz, dt timestamp)".to_owned(),
        "INSERT INTO narrow (id, n, v, i) VALUES (1, 1234567890.12, 'abcde', 2147483647), (2, 1.125, 'a', 1), (3, 12345678901, 'a', 1), \
         (4, 1, '😀😀😀😀😀😀', 1), (5, 1, 'a', 2147483648), (6, 123456789012345678901234567.1234567890, 'a', 1)".to_owned(),
        "UPDATE narrow SET ts = '2038-01-19 03:14:07.999999+00', dt = '2024-01-01 00:00:00'".to_owned(),
        // MariaDB's TIMESTAMP ends in 2038 and starts in 1970; DATETIME (no fraction) has none.
        "INSERT INTO narrow VALUES (7, 1, 'a', 1, '2050-01-01 00:00:00+00', '2024-01-01 00:00:00'), \
         (8, 1, 'a', 1, '1969-12-31 23:59:59+00', '2024-01-01 00:00:00'), (9, 1, 'a', 1, '2024-01-01 00:00:00+00', '2024-01-01 00:00:00.5')".to_owned(),
    ];
    for (id, column, value) in rows {
        let mut values = ok_row.to_vec();
        values[column] = value;
        statements.push(format!(
            "INSERT INTO edge VALUES ({id}, {})",
            values.join(", ")
        ));
    }
    rt().block_on(src.exec(&statements));
    // An existing, narrower destination table: its columns judge the values.
    rt().block_on(dst.exec(&[
        "CREATE TABLE narrow (id BIGINT PRIMARY KEY, n DECIMAL(12,2), v VARCHAR(5), i INT, ts TIMESTAMP(6) NULL DEFAULT NULL, dt DATETIME) DEFAULT CHARSET=utf8mb4".to_owned(),
    ]));
    let sync = |name: &str| {
        format!("[syncs.{name}]\nsource = \"src.{name}\"\ndestination = \"dst.{name}\"\nmax_rejected = 100\n\n")
    };
    write_config(
        d,
        &[("src", &src), ("dst", &dst)],
        &[sync("edge"), sync("keys"), sync("narrow")].concat(),
    );

    assert_rejected(
        d,
        "edge",
        2,
        &[
            (
                "[2]",
                "c_ts",
                "year 1 is outside the range of MySQL's DATETIME",
            ),
            (
                "[3]",
                "c_date",
                "year 10000 is outside the range of MySQL's DATE",
            ),
            ("[4]", "c_tstz", "year 999"),
            ("[5]", "c_f64", "NaN"),
            ("[6]", "c_f32", "inf"),
            ("[7]", "c_time", "not a time of day"),
        ],
    );
    let long_key = format!("[\"{}\"]", "b".repeat(256));
    assert_rejected(d, "keys", 1, &[(long_key.as_str(), "k", "too long")]);
    assert_rejected(
        d,
        "narrow",
        1,
        &[
            ("[2]", "n", "decimal(12,2)"),
            ("[3]", "n", "out of range"),
            ("[4]", "v", "too long"),
            ("[5]", "i", "out of range"),
            ("[6]", "n", "decimal(12,2)"),
            ("[7]", "ts", "incorrect datetime value"),
            ("[8]", "ts", "incorrect datetime value"),
            (
                "[9]",
                "dt",
                "fractional seconds .500000 do not fit datetime",
            ),
        ],
    );

    // Nothing truncated, rounded or clamped arrived: only the rows that fit, exactly.
    rt().block_on(async {
        let mut c = dst.my().await;
        let ids: Vec<i64> = sqlx::query_scalar("SELECT CAST(id AS SIGNED) FROM edge ORDER BY id").fetch_all(&mut c).await.unwrap();
        assert_eq!(ids, [1, 8]);
        let edge: (String, String, String, String) = sqlx::query_as(
            "SELECT CAST(c_ts AS CHAR), CAST(c_date AS CHAR), CAST(c_tstz AS CHAR), CAST(c_time AS CHAR) FROM edge WHERE id = 8",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert_eq!(
            edge,
            ("9999-12-31 23:59:59.999999".into(), "1000-01-01".into(), "1000-01-01 00:00:00.000000".into(), "23:59:59.999999".into())
        );
        let keys: Vec<String> = sqlx::query_scalar("SELECT CONVERT(k USING utf8mb4) FROM `keys`").fetch_all(&mut c).await.unwrap();
        assert_eq!(keys, ["😀".repeat(255)], "only the key that fits VARCHAR(255), whole");
        let narrow: Vec<(i64, String, String, i64, String, String)> = sqlx::query_as(
            "SELECT CAST(id AS SIGNED), CAST(n AS CHAR), CONVERT(v USING utf8mb4), CAST(i AS SIGNED), CAST(ts AS CHAR), CAST(dt AS CHAR) FROM narrow",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        assert_eq!(
            narrow,
            [(
                1,
                "1234567890.12".to_owned(),
                "abcde".to_owned(),
                2147483647,
                "2038-01-19 03:14:07.999999".to_owned(),
                "2024-01-01 00:00:00".to_owned()
            )]
        );
    });
}

#[test]
fn values_postgres_cannot_hold_are_rejected_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(lite) = database(Sys::Sqlite, d, "lite") else {
        return;
    };
    let Some(my) = database(Sys::Mariadb, d, "my") else {
        return;
    };
    let Some(pg) = database(Sys::Postgres, d, "pg") else {
        return;
    };
    // Text with a NUL byte, from both other systems.
    rt().block_on(async {
        let nul = V::Text("before \0 after".into());
        let fine = t("fine");
        lite.create_and_fill("lite_edge", &[("c_text", "TEXT")], &[(1, vec![&fine]), (2, vec![&nul])]).await;
        my.create_and_fill("my_edge", &[("c_text", "LONGTEXT")], &[(1, vec![&fine]), (2, vec![&nul])]).await;
        lite.exec(&[
            "CREATE TABLE narrow (id INTEGER PRIMARY KEY, v TEXT, n DECIMAL_TEXT(20,6), i INTEGER, f REAL, ts TIMESTAMP)".to_owned(),
            "INSERT INTO narrow VALUES (1, 'abc', '999.99', 32767, 1.5, '2024-01-01 00:00:01'), (2, 'abcd', '1', 1, 1, NULL), \
             (3, 'a', '1.005', 1, 1, NULL), (4, 'a', '1000', 1, 1, NULL), (5, 'a', '1', 32768, 1, NULL), (6, 'a', '1', 1, 1e300, NULL), \
             (7, 'a', '1', 1, 1, '2024-01-01 00:00:00.5')".to_owned(),
        ])
        .await;
        // An existing, narrower destination table.
        pg.exec(&["CREATE TABLE narrow (id bigint PRIMARY KEY, v varchar(3), n numeric(5,2), i smallint, f real, ts timestamp(0))".to_owned()]).await;
    });
    write_config(
        d,
        &[("lite", &lite), ("my", &my), ("pg", &pg)],
        "[syncs.lite_edge]\nsource = \"lite.lite_edge\"\ndestination = \"pg.lite_edge\"\nmax_rejected = 100\n\n\
         [syncs.my_edge]\nsource = \"my.my_edge\"\ndestination = \"pg.my_edge\"\nmax_rejected = 100\n\n\
         [syncs.narrow]\nsource = \"lite.narrow\"\ndestination = \"pg.narrow\"\nmax_rejected = 100\n",
    );
    assert_rejected(d, "lite_edge", 1, &[("[2]", "c_text", "NUL")]);
    assert_rejected(d, "my_edge", 1, &[("[2]", "c_text", "NUL")]);
    assert_rejected(
        d,
        "narrow",
        1,
        &[
            ("[2]", "v", "limit of 3"),
            ("[3]", "n", "more than 2 decimal places"),
            ("[4]", "n", "does not fit numeric(5,2)"),
            ("[5]", "i", "does not fit a smallint"),
            ("[6]", "f", "out of range for real"),
            ("[7]", "ts", "more fractional digits than timestamp(0)"),
        ],
    );
    rt().block_on(async {
        assert_eq!(pg_ids(&pg, "SELECT id FROM lite_edge").await, [1]);
        assert_eq!(pg_ids(&pg, "SELECT id FROM my_edge").await, [1]);
        let mut c = pg.pg().await;
        let narrow: Vec<(i64, String, String, i16, f32, String)> =
            sqlx::query_as("SELECT id, v::text, n::text, i, f, ts::text FROM narrow")
                .fetch_all(&mut c)
                .await
                .unwrap();
        assert_eq!(
            narrow,
            [(
                1,
                "abc".to_owned(),
                "999.99".to_owned(),
                32767,
                1.5,
                "2024-01-01 00:00:01".to_owned()
            )]
        );
    });
}

#[test]
fn values_sqlite_cannot_hold_are_rejected_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(pg) = database(Sys::Postgres, d, "pg") else {
        return;
    };
    let lite = database(Sys::Sqlite, d, "lite").unwrap();
    rt().block_on(async {
        pg.exec(&[
            "CREATE TABLE edge (id bigint PRIMARY KEY, c_f64 double precision, c_time time)".to_owned(),
            "INSERT INTO edge VALUES (1, 1.5, '12:00:00'), (2, 'NaN', '12:00:00'), (3, 1.5, '24:00:00')".to_owned(),
            "CREATE TABLE wide (id bigint PRIMARY KEY, n numeric(38,10))".to_owned(),
            "INSERT INTO wide VALUES (1, 12345678901234.5), (2, 1234567890123456789012345678.1234567890), \
             (3, 0.123456789), (4, 1234567890123456)".to_owned(),
        ])
        .await;
        // An existing column of NUMERIC affinity: SQLite keeps 15 significant digits of it.
        lite.exec(&["CREATE TABLE wide (id INTEGER PRIMARY KEY, n NUMERIC(38,10))".to_owned()]).await;
    });
    write_config(
        d,
        &[("pg", &pg), ("lite", &lite)],
        "[syncs.edge]\nsource = \"pg.edge\"\ndestination = \"lite.edge\"\nmax_rejected = 100\n\n\
         [syncs.wide]\nsource = \"pg.wide\"\ndestination = \"lite.wide\"\nmax_rejected = 100\n",
    );
    assert_rejected(
        d,
        "edge",
        1,
        &[
            ("[2]", "c_f64", "NaN"),
            ("[3]", "c_time", "not a time of day"),
        ],
    );
    assert_rejected(
        d,
        "wide",
        2,
        &[("[2]", "n", "digits"), ("[4]", "n", "digits")],
    );
    rt().block_on(async {
        let mut c = lite.lite().await;
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM edge ORDER BY id")
            .fetch_all(&mut c)
            .await
            .unwrap();
        assert_eq!(ids, [1]);
        let wide: Vec<(i64, f64)> = sqlx::query_as("SELECT id, n FROM wide ORDER BY id")
            .fetch_all(&mut c)
            .await
            .unwrap();
        assert_eq!(wide, [(1, 12345678901234.5), (3, 0.123456789)]);
    });
}

#[test]
fn text_and_bytes_with_nul_travel_between_mariadb_and_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(my) = database(Sys::Mariadb, d, "my") else {
        return;
    };
    let lite = database(Sys::Sqlite, d, "lite").unwrap();
    let values = [t("nul \0 inside"), t("\0"), t("\0\0 at the start"), t("")];
    let bytes = [
        V::Bytes(vec![0]),
        V::Bytes(b"a\0b".to_vec()),
        V::Bytes(vec![0; 3]),
        V::Bytes(Vec::new()),
    ];
    let rows: Vec<(i64, Vec<&V>)> = (0..4)
        .map(|i| (i as i64 + 1, vec![&values[i], &bytes[i]]))
        .collect();
    rt().block_on(my.create_and_fill(
        "nul",
        &[("c_text", "LONGTEXT"), ("c_bytes", "LONGBLOB")],
        &rows,
    ));
    write_config(
        d,
        &[("my", &my), ("lite", &lite)],
        "[syncs.forward]\nsource = \"my.nul\"\ndestination = \"lite.nul\"\nmax_rejected = 0\n\n\
         [syncs.back]\nsource = \"lite.nul\"\ndestination = \"my.nul_back\"\nmax_rejected = 0\n",
    );
    for (sync, db, table) in [("forward", &lite, "nul"), ("back", &my, "nul_back")] {
        let (ok, report, stderr) = run_sync(d, sync);
        assert!(ok, "{report}\n{stderr}");
        let got = rt().block_on(db.read(table, &[("c_text", L::Text), ("c_bytes", L::Bin)]));
        for (id, vs) in &rows {
            assert_eq!(
                got[id],
                [expect(vs[0], L::Text), expect(vs[1], L::Bin)],
                "`{sync}`, row {id}"
            );
        }
    }
}

#[test]
fn source_values_outside_their_column_type_fail_the_read_instead_of_changing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(my) = database(Sys::Mariadb, d, "my") else {
        return;
    };
    let lite = database(Sys::Sqlite, d, "lite").unwrap();
    let out = database(Sys::Sqlite, d, "out").unwrap();
    rt().block_on(async {
        // MariaDB's BOOLEAN is tinyint(1), which holds -128..127.
        my.exec(&[
            "CREATE TABLE flags (id BIGINT PRIMARY KEY, flag BOOLEAN)".to_owned(),
            "INSERT INTO flags VALUES (1, 1), (2, 2)".to_owned(),
        ])
        .await;
        // SQLite stores a REAL of any size in a FLOAT4 column.
        lite.exec(&[
            "CREATE TABLE f (id INTEGER PRIMARY KEY, x FLOAT4)".to_owned(),
            "INSERT INTO f VALUES (1, 1.5), (2, 1e300)".to_owned(),
        ])
        .await;
    });
    write_config(
        d,
        &[("my", &my), ("lite", &lite), ("out", &out)],
        "[syncs.flags]\nsource = \"my.flags\"\ndestination = \"out.flags\"\n\n\
         [syncs.f]\nsource = \"lite.f\"\ndestination = \"out.f\"\n",
    );
    for (sync, field, says) in [
        ("flags", "`flag`", "2 is not a boolean"),
        ("f", "`x`", "out of range for float32"),
    ] {
        let (ok, report, _) = run_sync(d, sync);
        assert!(!ok, "`{sync}`: the value arrived changed: {report}");
        assert_eq!(report["error"]["kind"], "schema", "{report}");
        let message = report["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(field) && message.contains(says),
            "`{sync}`: {message}"
        );
    }
    // Nothing of either table arrived (true for 2, or an infinity for 1e300).
    let tables: Vec<String> = rt().block_on(async {
        let mut c = out.lite().await;
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut c)
            .await
            .unwrap()
    });
    for table in tables {
        let n: i64 = rt().block_on(async {
            let mut c = out.lite().await;
            sqlx::query_scalar(&format!("SELECT count(*) FROM \"{table}\" WHERE id = 2"))
                .fetch_one(&mut c)
                .await
                .unwrap()
        });
        assert_eq!(n, 0, "row 2 of `{table}` arrived");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A destination server that goes away mid-run (issue 3, item 5)
// ---------------------------------------------------------------------------------------------

const BIG_ROWS: i64 = 200_000;

fn payload(id: i64) -> String {
    format!("row {id} ünïcødé 😀 {}", id * 7919 % 100_003)
}

/// Every row of `big`, ordered by id.
async fn big_rows(db: &Db) -> Vec<(i64, String, i64)> {
    let sql = match db {
        Db::Mariadb(_) => "SELECT CAST(id AS SIGNED), CONVERT(payload USING utf8mb4), CAST(n AS SIGNED) FROM big ORDER BY id",
        _ => "SELECT id, payload, n FROM big ORDER BY id",
    };
    macro_rules! fetch {
        ($c:expr) => {
            sqlx::query_as(sql).fetch_all(&mut $c).await.unwrap()
        };
    }
    match db {
        Db::Postgres(_) => fetch!(db.pg().await),
        Db::Mariadb(_) => fetch!(db.my().await),
        Db::Sqlite(_) => fetch!(db.lite().await),
    }
}

/// FNV-1a over the rows' text.
fn checksum(rows: &[(i64, String, i64)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (id, p, n) in rows {
        for b in format!("{id}|{p}|{n}\n").bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn ledger_entries(dir: &Path) -> i64 {
    let path = dir.join("state.db");
    if !path.exists() {
        return 0;
    }
    rt().block_on(async {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .read_only(true);
        let Ok(mut c) = sqlx::SqliteConnection::connect_with(&opts).await else {
            return 0;
        };
        sqlx::query_scalar("SELECT count(*) FROM ledger")
            .fetch_one(&mut c)
            .await
            .unwrap_or(0)
    })
}

/// Ends every connection lockstep holds to the destination database; returns how many.
async fn drop_connections(db: &Db) -> u64 {
    match db {
        Db::Postgres(t) => {
            let mut c = db.pg().await;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = $1 AND application_name = 'lockstep-postgres' AND pid <> pg_backend_pid()",
            )
            .bind(&t.name)
            .fetch_one(&mut c)
            .await
            .unwrap();
            n as u64
        }
        Db::Mariadb(t) => {
            let mut c = db.my().await;
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
            )
            .bind(&t.name)
            .fetch_all(&mut c)
            .await
            .unwrap();
            for id in &ids {
                // A connection may end by itself meanwhile.
                let _ = sqlx::query(&format!("KILL CONNECTION {id}"))
                    .execute(&mut c)
                    .await;
            }
            ids.len() as u64
        }
        Db::Sqlite(_) => unreachable!(),
    }
}

/// Syncs 200k rows from SQLite into `to` in batches of 500, drops the destination's
/// connections once some batches are committed, and checks that the run fails as transient
/// (or, if the connector reconnects by itself, completes), that a rerun completes, and that
/// the destination then equals the source.
fn destination_goes_away_mid_run(to: Sys) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = database(Sys::Sqlite, d, "src").unwrap();
    let Some(dst) = database(to, d, "dst") else {
        return false;
    };
    rt().block_on(async {
        let mut c = src.lite().await;
        let mut tx = c.begin().await.unwrap();
        sqlx::query(
            "CREATE TABLE big (id INTEGER PRIMARY KEY, payload TEXT NOT NULL, n INTEGER NOT NULL)",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        for start in (1..=BIG_ROWS).step_by(1000) {
            let values: Vec<String> = (start..start + 1000)
                .map(|id| format!("({id}, '{}', {})", payload(id), id * 31 - 7))
                .collect();
            sqlx::query(&format!("INSERT INTO big VALUES {}", values.join(", ")))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    });
    write_config(
        d,
        &[("src", &src), ("dst", &dst)],
        "[syncs.big]\nsource = \"src.big\"\ndestination = \"dst.big\"\nbatch_size = 500\n",
    );

    let mut child = lockstep(d)
        .args(["run", "big", "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.join("first.stderr")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while ledger_entries(d) < 10_000 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "the run made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let dropped = rt().block_on(drop_connections(&dst));
    assert!(dropped >= 1, "no lockstep connection to {to} was found");
    let output = child.wait_with_output().unwrap();
    let first: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}",
            std::fs::read_to_string(d.join("first.stderr")).unwrap()
        )
    });
    let reconnected = output.status.success();
    eprintln!(
        "{to}: {dropped} connection(s) dropped; the run: {} {}",
        first["status"], first["error"]
    );
    if reconnected {
        // The connector reconnected by itself and finished the job.
        assert_eq!(first["status"], "succeeded", "{first}");
        eprintln!(
            "NOTICE: {to}: the run survived its connections being dropped: {}",
            first["metrics"]
        );
    } else {
        assert_eq!(output.status.code(), Some(1), "{first}");
        assert_eq!(first["status"], "failed", "{first}");
        assert_eq!(first["error"]["kind"], "transient", "{to}: {first}");
        let written = metric(&first, "added");
        assert!(written < BIG_ROWS as u64, "{first}");
        let (ok, rerun, stderr) = run_sync(d, "big");
        assert!(ok, "the rerun failed: {rerun}\n{stderr}");
        assert_eq!(metric(&rerun, "rejected"), 0, "{rerun}");
        assert_eq!(
            metric(&rerun, "added") + metric(&rerun, "updated") + metric(&rerun, "unchanged"),
            metric(&rerun, "read"),
            "{rerun}"
        );
    }

    // Nothing lost, nothing twice: count, distinct keys and a checksum of every row.
    let (want, got) = rt().block_on(async { (big_rows(&src).await, big_rows(&dst).await) });
    assert_eq!(want.len(), BIG_ROWS as usize);
    let distinct: std::collections::BTreeSet<i64> = got.iter().map(|r| r.0).collect();
    assert_eq!(
        (got.len(), distinct.len()),
        (want.len(), want.len()),
        "{to}: rows lost or duplicated"
    );
    if checksum(&got) != checksum(&want) {
        let i = (0..want.len()).find(|&i| want[i] != got[i]).unwrap();
        panic!(
            "{to}: first difference at row {i}: source {:?}, destination {:?}",
            want[i], got[i]
        );
    }
    // And the ledger agrees with the destination: a further run finds nothing to write.
    let (ok, again, stderr) = run_sync(d, "big");
    assert!(ok, "{again}\n{stderr}");
    assert_eq!(
        (metric(&again, "added"), metric(&again, "updated")),
        (0, 0),
        "{again}"
    );
    reconnected
}

#[test]
fn postgres_going_away_mid_run_fails_transient_and_a_rerun_loses_nothing() {
    destination_goes_away_mid_run(Sys::Postgres);
}

#[test]
fn mariadb_going_away_mid_run_fails_transient_and_a_rerun_loses_nothing() {
    destination_goes_away_mid_run(Sys::Mariadb);
}
