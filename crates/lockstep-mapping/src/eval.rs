//! Evaluating typed expressions over a record batch.
//!
//! A row that fails (a cast, a date that does not parse, a value not in a value map) gets a
//! reason in `errors` and a null value, and the rest of the batch goes on. A missing JSON path
//! is kept apart (`Out::missing`): a default (`default`, `coalesce`, a map's fallback) accepts
//! it; otherwise the row is rejected.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Builder, RecordBatch, StringArray, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder, UInt32Array,
};
use arrow::datatypes::{Date32Type, Time64MicrosecondType, TimestampMicrosecondType};
use chrono::format::{parse as chrono_parse, Item, Parsed, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveTime, Timelike, Utc};
use lockstep_core::protocol::DataType;
use lockstep_expr::path_text;
use serde_json::Value as Json;
use sha2::Digest;

use crate::cast::{cast, fail, shown, text_at, Errors};
use crate::compile::{HashAlgo, Node, Op, TextOp};
use crate::MappingError;

/// A value computed over a batch.
pub(crate) struct Out {
    pub array: ArrayRef,
    /// Rows whose value is a JSON path that does not exist, with the reason.
    pub missing: BTreeMap<usize, String>,
}

impl Out {
    fn plain(array: ArrayRef) -> Out {
        Out {
            array,
            missing: BTreeMap::new(),
        }
    }
}

type Docs = Rc<Vec<Option<Result<Json, String>>>>;

/// A batch being mapped, with the columns and JSON documents read so far.
pub(crate) struct Ctx<'a> {
    batch: &'a RecordBatch,
    pub rows: usize,
    columns: HashMap<String, ArrayRef>,
    docs: HashMap<String, Docs>,
}

impl<'a> Ctx<'a> {
    pub fn new(batch: &'a RecordBatch) -> Self {
        Ctx {
            batch,
            rows: batch.num_rows(),
            columns: HashMap::new(),
            docs: HashMap::new(),
        }
    }

    pub fn column(&mut self, name: &str, ty: DataType) -> Result<ArrayRef, MappingError> {
        if let Some(a) = self.columns.get(name) {
            return Ok(a.clone());
        }
        let index = self
            .batch
            .schema()
            .index_of(name)
            .map_err(|_| MappingError::MissingColumn(name.to_owned()))?;
        let array = crate::cast::normalize(self.batch.column(index), ty, name)?;
        self.columns.insert(name.to_owned(), array.clone());
        Ok(array)
    }

    /// The JSON documents of a json column, parsed once per batch.
    fn docs(&mut self, name: &str) -> Result<Docs, MappingError> {
        if let Some(d) = self.docs.get(name) {
            return Ok(d.clone());
        }
        let array = self.column(name, DataType::Json)?;
        let docs: Docs = Rc::new(parse_docs(&array));
        self.docs.insert(name.to_owned(), docs.clone());
        Ok(docs)
    }
}

fn parse_docs(array: &ArrayRef) -> Vec<Option<Result<Json, String>>> {
    array
        .as_string::<i32>()
        .iter()
        .map(|v| {
            v.map(|v| {
                serde_json::from_str::<Json>(v)
                    .map_err(|e| format!("{} is not valid JSON ({e})", shown(v)))
            })
        })
        .collect()
}

fn strings(array: &ArrayRef) -> &StringArray {
    array.as_string::<i32>()
}

/// The value at `path` in `doc`: object members by name, array items by index.
fn lookup<'j>(doc: &'j Json, path: &[String]) -> Option<&'j Json> {
    let mut at = doc;
    for segment in path {
        at = match at {
            Json::Object(map) => map.get(segment)?,
            Json::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// JSON text of the value at `path` in each document; null for null documents and JSON nulls.
fn extract(
    docs: &[Option<Result<Json, String>>],
    path: &[String],
    what: &str,
    errors: &mut Errors,
) -> Out {
    let mut missing = BTreeMap::new();
    let mut out = StringBuilder::with_capacity(docs.len(), docs.len() * 8);
    for (row, doc) in docs.iter().enumerate() {
        match doc {
            None => out.append_null(),
            Some(Err(reason)) => {
                fail(errors, row, || format!("`{what}`: {reason}"));
                out.append_null();
            }
            Some(Ok(doc)) => match lookup(doc, path) {
                None => {
                    missing.insert(
                        row,
                        format!(
                            "path `{}` is not in {what}; give a default to accept that",
                            path_text(path)
                        ),
                    );
                    out.append_null();
                }
                Some(Json::Null) => out.append_null(),
                Some(v) => out.append_value(v.to_string()),
            },
        }
    }
    Out {
        array: Arc::new(out.finish()),
        missing,
    }
}

pub(crate) fn eval(
    node: &Node,
    ctx: &mut Ctx<'_>,
    errors: &mut Errors,
) -> Result<Out, MappingError> {
    let rows = ctx.rows;
    let out = match &node.op {
        Op::Column(name) => Out::plain(ctx.column(name, node.ty)?),
        Op::Path { column, path } => {
            let docs = ctx.docs(column)?;
            extract(&docs, path, &format!("source field `{column}`"), errors)
        }
        Op::Get { input, path } => {
            let mut inner = eval(input, ctx, errors)?;
            let docs = parse_docs(&inner.array);
            let mut out = extract(&docs, path, &format!("`{}`", input.text), errors);
            out.missing.append(&mut inner.missing);
            out
        }
        Op::Const(array) => {
            let indices = UInt32Array::from(vec![0u32; rows]);
            Out::plain(arrow::compute::take(array.as_ref(), &indices, None).map_err(internal)?)
        }
        Op::Text(op, input) => {
            let inner = eval(input, ctx, errors)?;
            let out: StringArray = strings(&inner.array)
                .iter()
                .map(|v| {
                    v.map(|s| match op {
                        TextOp::Lower => s.to_lowercase(),
                        TextOp::Upper => s.to_uppercase(),
                        TextOp::Trim => s.trim().to_owned(),
                        TextOp::LTrim => s.trim_start().to_owned(),
                        TextOp::RTrim => s.trim_end().to_owned(),
                        TextOp::Replace(from, to) => s.replace(from.as_str(), to),
                    })
                })
                .collect();
            Out {
                array: Arc::new(out),
                missing: inner.missing,
            }
        }
        Op::Concat(parts) => {
            let mut missing = BTreeMap::new();
            let mut arrays = Vec::with_capacity(parts.len());
            for p in parts {
                let mut o = eval(p, ctx, errors)?;
                missing.append(&mut o.missing);
                arrays.push(o.array);
            }
            let mut out = StringBuilder::with_capacity(rows, rows * 16);
            let mut buf = String::new();
            for row in 0..rows {
                buf.clear();
                for a in &arrays {
                    if !a.is_null(row) {
                        buf.push_str(strings(a).value(row));
                    }
                }
                out.append_value(&buf);
            }
            Out {
                array: Arc::new(out.finish()),
                missing,
            }
        }
        Op::Split(separator, input) => {
            let inner = eval(input, ctx, errors)?;
            let out: StringArray = strings(&inner.array)
                .iter()
                .map(|v| {
                    v.map(|s| {
                        let parts: Vec<Json> = if s.is_empty() {
                            Vec::new()
                        } else {
                            s.split(separator.as_str())
                                .map(|p| Json::String(p.to_owned()))
                                .collect()
                        };
                        Json::Array(parts).to_string()
                    })
                })
                .collect();
            Out {
                array: Arc::new(out),
                missing: inner.missing,
            }
        }
        Op::Coalesce(args) => {
            let mut result: Option<ArrayRef> = None;
            let mut missing = BTreeMap::new();
            for a in args {
                // Only the last value's missing paths count: earlier ones are defaulted.
                let o = eval(a, ctx, errors)?;
                missing = o.missing;
                result = Some(match result {
                    None => o.array,
                    Some(r) => {
                        let mask = arrow::compute::is_null(&r).map_err(internal)?;
                        arrow::compute::kernels::zip::zip(&mask, &o.array, &r).map_err(internal)?
                    }
                });
            }
            let array = result.expect("coalesce has arguments");
            missing.retain(|row, _| array.is_null(*row));
            Out { array, missing }
        }
        Op::Cast(input) => {
            let inner = eval(input, ctx, errors)?;
            Out {
                array: cast(&inner.array, input.ty, node.ty, errors)?,
                missing: inner.missing,
            }
        }
        Op::Parse(format, input) => {
            let inner = eval(input, ctx, errors)?;
            Out {
                array: parse_temporal(strings(&inner.array), format, node.ty, errors),
                missing: inner.missing,
            }
        }
        Op::Format(format, input) => {
            let inner = eval(input, ctx, errors)?;
            Out {
                array: format_temporal(&inner.array, input.ty, format, errors),
                missing: inner.missing,
            }
        }
        Op::Hash(algo, input) => {
            let inner = eval(input, ctx, errors)?;
            Out {
                array: hash(&inner.array, input.ty, *algo, errors),
                missing: inner.missing,
            }
        }
        Op::Map {
            input,
            lookup,
            values,
            fallback,
        } => {
            let inner = eval(input, ctx, errors)?;
            let keys = strings(&inner.array);
            let mut indices: Vec<Option<u32>> = Vec::with_capacity(rows);
            let mut use_fallback = Vec::with_capacity(rows);
            for (row, key) in keys.iter().enumerate() {
                let found = key.and_then(|k| lookup.get(k).copied());
                indices.push(found);
                use_fallback.push(found.is_none());
                if let (Some(k), None, None) = (key, found, fallback) {
                    fail(errors, row, || {
                        let mut known: Vec<&str> = lookup.keys().map(String::as_str).collect();
                        known.sort_unstable();
                        format!(
                            "{} is not in the value map ({}); give a default for other values",
                            shown(k),
                            known
                                .iter()
                                .map(|k| format!("'{k}'"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    });
                }
            }
            let mapped = arrow::compute::take(values.as_ref(), &UInt32Array::from(indices), None)
                .map_err(internal)?;
            match fallback {
                None => Out {
                    array: mapped,
                    missing: inner.missing,
                },
                Some(f) => {
                    let other = eval(f, ctx, errors)?;
                    let mask = BooleanArray::from(use_fallback);
                    let array = arrow::compute::kernels::zip::zip(&mask, &other.array, &mapped)
                        .map_err(internal)?;
                    let mut missing = other.missing;
                    missing.retain(|row, _| array.is_null(*row));
                    Out { array, missing }
                }
            }
        }
    };
    Ok(out)
}

fn internal(e: arrow::error::ArrowError) -> MappingError {
    MappingError::InvalidBatch(e.to_string())
}

fn parse_temporal(
    input: &StringArray,
    format: &str,
    ty: DataType,
    errors: &mut Errors,
) -> ArrayRef {
    let items: Vec<Item<'_>> = StrftimeItems::new(format).collect();
    let what = crate::cast::a_type(ty);
    let mut reason = |row: usize, v: &str, e: chrono::ParseError| {
        fail(errors, row, || {
            format!("{} is not {what} in the format `{format}` ({e})", shown(v))
        });
    };
    let parsed = |v: &str| -> Result<Parsed, chrono::ParseError> {
        let mut p = Parsed::new();
        chrono_parse(&mut p, v, items.iter())?;
        Ok(p)
    };
    match ty {
        DataType::Date => {
            let mut out = Date32Builder::with_capacity(input.len());
            for (row, v) in input.iter().enumerate() {
                match v.map(|v| (v, parsed(v).and_then(|p| p.to_naive_date()))) {
                    None => out.append_null(),
                    Some((_, Ok(d))) => out.append_value(days(d)),
                    Some((v, Err(e))) => {
                        reason(row, v, e);
                        out.append_null();
                    }
                }
            }
            Arc::new(out.finish())
        }
        DataType::Time => {
            let mut out = Time64MicrosecondBuilder::with_capacity(input.len());
            for (row, v) in input.iter().enumerate() {
                match v.map(|v| (v, parsed(v).and_then(|p| p.to_naive_time()))) {
                    None => out.append_null(),
                    Some((_, Ok(t))) => out.append_value(micros_of_day(t)),
                    Some((v, Err(e))) => {
                        reason(row, v, e);
                        out.append_null();
                    }
                }
            }
            Arc::new(out.finish())
        }
        DataType::Timestamp | DataType::TimestampTz => {
            let zoned = ty == DataType::TimestampTz;
            let mut out = TimestampMicrosecondBuilder::with_capacity(input.len());
            for (row, v) in input.iter().enumerate() {
                let Some(v) = v else {
                    out.append_null();
                    continue;
                };
                let micros = parsed(v).and_then(|p| {
                    if !zoned {
                        return Ok(p
                            .to_naive_datetime_with_offset(0)?
                            .and_utc()
                            .timestamp_micros());
                    }
                    let at = if p.offset().is_some() {
                        p.to_datetime()?.with_timezone(&Utc)
                    } else {
                        p.to_datetime_with_timezone(&Utc)?
                    };
                    Ok(at.timestamp_micros())
                });
                match micros {
                    Ok(us) => out.append_value(us),
                    Err(e) => {
                        reason(row, v, e);
                        out.append_null();
                    }
                }
            }
            let array = out.finish();
            if zoned {
                Arc::new(array.with_timezone("UTC"))
            } else {
                Arc::new(array)
            }
        }
        _ => unreachable!("parse gives a date, a time or a timestamp"),
    }
}

fn days(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch")).num_days() as i32
}

fn micros_of_day(t: NaiveTime) -> i64 {
    t.num_seconds_from_midnight() as i64 * 1_000_000
        + (t.nanosecond() as i64 % 1_000_000_000) / 1000
}

fn format_temporal(array: &ArrayRef, ty: DataType, format: &str, errors: &mut Errors) -> ArrayRef {
    let items: Vec<Item<'_>> = StrftimeItems::new(format).collect();
    let mut out = StringBuilder::with_capacity(array.len(), array.len() * format.len());
    let mut buf = String::new();
    for row in 0..array.len() {
        if array.is_null(row) {
            out.append_null();
            continue;
        }
        buf.clear();
        let written = match ty {
            DataType::Date => {
                let d = array.as_primitive::<Date32Type>().value(row);
                NaiveDate::from_ymd_opt(1970, 1, 1)
                    .and_then(|e| e.checked_add_signed(chrono::Duration::days(d as i64)))
                    .map(|d| write!(buf, "{}", d.format_with_items(items.iter())))
            }
            DataType::Time => {
                let us = array.as_primitive::<Time64MicrosecondType>().value(row);
                NaiveTime::from_num_seconds_from_midnight_opt(
                    (us / 1_000_000) as u32,
                    ((us % 1_000_000) * 1000) as u32,
                )
                .map(|t| write!(buf, "{}", t.format_with_items(items.iter())))
            }
            DataType::Timestamp => {
                let us = array.as_primitive::<TimestampMicrosecondType>().value(row);
                DateTime::from_timestamp_micros(us)
                    .map(|t| write!(buf, "{}", t.naive_utc().format_with_items(items.iter())))
            }
            _ => {
                let us = array.as_primitive::<TimestampMicrosecondType>().value(row);
                DateTime::from_timestamp_micros(us)
                    .map(|t| write!(buf, "{}", t.format_with_items(items.iter())))
            }
        };
        match written {
            Some(Ok(())) => out.append_value(&buf),
            _ => {
                let value = text_at(array, row, ty).unwrap_or_default();
                fail(errors, row, || {
                    format!(
                        "{} cannot be written in the format `{format}`",
                        shown(&value)
                    )
                });
                out.append_null();
            }
        }
    }
    Arc::new(out.finish())
}

/// The hash of each value, in lower-case hex: of the bytes of binary values, of the text of
/// every other type.
fn hash(array: &ArrayRef, ty: DataType, algo: HashAlgo, errors: &mut Errors) -> ArrayRef {
    let digest = |bytes: &[u8]| match algo {
        HashAlgo::Sha256 => hex(&sha2::Sha256::digest(bytes)),
        HashAlgo::Xxh3 => format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes)),
    };
    let out: StringArray = if ty == DataType::Binary {
        array
            .as_binary::<i32>()
            .iter()
            .map(|v| v.map(digest))
            .collect()
    } else {
        let text = crate::cast::to_text(array, ty, errors);
        strings(&text)
            .iter()
            .map(|v| v.map(|s| digest(s.as_bytes())))
            .collect()
    };
    Arc::new(out)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The JSON value of a leaf of a nested destination field.
pub(crate) fn leaf_json(array: &ArrayRef, row: usize, ty: DataType) -> Json {
    lockstep_core::protocol::arrow_types::json_value(array, row, Some(ty))
}

/// Sets `value` at `path` in `object`, creating objects on the way.
pub(crate) fn insert_path(
    object: &mut serde_json::Map<String, Json>,
    path: &[String],
    value: Json,
) {
    let (last, parents) = path.split_last().expect("a path has a part");
    let mut at = object;
    for p in parents {
        let entry = at
            .entry(p.clone())
            .or_insert_with(|| Json::Object(serde_json::Map::new()));
        if !entry.is_object() {
            *entry = Json::Object(serde_json::Map::new());
        }
        at = entry.as_object_mut().expect("just made an object");
    }
    at.insert(last.clone(), value);
}
