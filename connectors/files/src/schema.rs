//! A stream's fields: read from the first file's header (CSV) or keys (JSON Lines), typed by
//! inference from a sample of its records, with the config's declared types winning field by
//! field, and the optional file name, line number and modification time fields at the end.
//!
//! Inference is conservative: a column is an integer only if every sampled value is one
//! without leading zeros (so `007` stays text), a date only if every value is `YYYY-MM-DD`,
//! and text when in doubt. Declaring a type in `fields` is always possible and always wins.

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use lockstep_plugin_sdk::{ConnectorError, DataType, FieldInfo, Result, StreamInfo};
use serde_json::Value;

use crate::config::StreamSpec;
use crate::parse::FileRecords;
use crate::scan;

/// What every sampled value of one field could be.
#[derive(Debug, Clone)]
struct Guess {
    seen: bool,
    int: bool,
    float: bool,
    boolean: bool,
    date: bool,
    timestamp: bool,
    timestamp_tz: bool,
    json: bool,
}

impl Default for Guess {
    fn default() -> Self {
        Self {
            seen: false,
            int: true,
            float: true,
            boolean: true,
            date: true,
            timestamp: true,
            timestamp_tz: true,
            json: true,
        }
    }
}

impl Guess {
    fn observe(&mut self, value: &Value) {
        match value {
            Value::Null => return,
            Value::String(text) if text.is_empty() => return,
            Value::String(text) => {
                let text = text.trim();
                self.int &= looks_like_integer(text);
                self.float &= looks_like_number(text);
                self.boolean &= matches!(text.to_ascii_lowercase().as_str(), "true" | "false");
                self.date &= NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok();
                self.timestamp &= ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
                    .iter()
                    .any(|f| NaiveDateTime::parse_from_str(text, f).is_ok());
                self.timestamp_tz &= DateTime::parse_from_rfc3339(text).is_ok()
                    || DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z").is_ok();
                self.json = false;
            }
            Value::Number(n) => {
                self.int &= n.is_i64();
                self.boolean = false;
                self.date = false;
                self.timestamp = false;
                self.timestamp_tz = false;
                self.json = false;
            }
            Value::Bool(_) => {
                self.int = false;
                self.float = false;
                self.date = false;
                self.timestamp = false;
                self.timestamp_tz = false;
                self.json = false;
            }
            Value::Array(_) | Value::Object(_) => {
                self.int = false;
                self.float = false;
                self.boolean = false;
                self.date = false;
                self.timestamp = false;
                self.timestamp_tz = false;
            }
        }
        self.seen = true;
    }

    fn data_type(&self) -> DataType {
        if !self.seen {
            return DataType::Text;
        }
        if self.int {
            DataType::Int64
        } else if self.float {
            DataType::Float64
        } else if self.boolean {
            DataType::Boolean
        } else if self.date {
            DataType::Date
        } else if self.timestamp {
            DataType::Timestamp
        } else if self.timestamp_tz {
            DataType::TimestampTz
        } else if self.json {
            DataType::Json
        } else {
            DataType::Text
        }
    }
}

fn looks_like_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits.len() == 1 || !digits.starts_with('0'))
        && text.parse::<i64>().is_ok()
}

fn looks_like_number(text: &str) -> bool {
    let body = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    !(int.is_empty() && frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
        && (int.len() <= 1 || !int.starts_with('0'))
}

/// The stream's description, from its files and config.
pub(crate) fn describe(spec: &StreamSpec) -> Result<StreamInfo> {
    let mut fields: Vec<FieldInfo> = match &spec.declared_order {
        Some(order) => order
            .iter()
            .map(|(name, data_type, nullable)| field(name, *data_type, *nullable))
            .collect(),
        None => infer(spec)?,
    };
    for (name, data_type) in &spec.declared {
        match fields.iter_mut().find(|f| &f.name == name) {
            Some(f) => f.data_type = *data_type,
            None => fields.push(field(name, *data_type, true)),
        }
    }
    let metadata = [
        (&spec.file_field, DataType::Text),
        (&spec.line_field, DataType::Int64),
        (&spec.modified_field, DataType::TimestampTz),
    ];
    for (name, data_type) in metadata {
        if let Some(name) = name {
            if fields.iter().any(|f| &f.name == name) {
                return Err(ConnectorError::config(format!(
                    "stream `{}`: the files already have a field `{name}`; give the added field \
                     another name",
                    spec.name
                )));
            }
            fields.push(field(name, data_type, false));
        }
    }
    for key in &spec.primary_key {
        if !fields.iter().any(|f| &f.name == key) {
            return Err(ConnectorError::config(format!(
                "`streams.{}.primary_key` names `{key}`, which is not a field of the files; \
                 the fields are: {}",
                spec.name,
                names(&fields)
            )));
        }
    }
    Ok(StreamInfo {
        name: spec.name.clone(),
        fields,
        primary_key: spec.primary_key.clone(),
        cursor_candidates: spec.modified_field.iter().cloned().collect(),
    })
}

fn field(name: &str, data_type: DataType, nullable: bool) -> FieldInfo {
    FieldInfo {
        name: name.to_owned(),
        data_type,
        nullable,
        native_type: None,
    }
}

pub(crate) fn names(fields: &[FieldInfo]) -> String {
    if fields.is_empty() {
        return "none".into();
    }
    fields
        .iter()
        .map(|f| format!("`{}`", f.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fields of the first file, typed from a sample of its records.
fn infer(spec: &StreamSpec) -> Result<Vec<FieldInfo>> {
    let files = scan::list_files(spec)?;
    let Some(first) = files.first() else {
        return Ok(Vec::new());
    };
    let mut records = FileRecords::open(&first.path, &first.name, spec)?;
    let mut names: Vec<String> = records.columns().map(<[_]>::to_vec).unwrap_or_default();
    let mut guesses: Vec<Guess> = vec![Guess::default(); names.len()];
    let mut sampled = 0;
    while sampled < spec.infer_rows {
        let Some(next) = records.next_record()? else {
            break;
        };
        // A malformed record is reported when the stream is read, not here.
        let Ok(record) = next else { continue };
        sampled += 1;
        for (key, value) in &record.values {
            let index = match names.iter().position(|n| n == key) {
                Some(i) => i,
                None => {
                    names.push(key.clone());
                    guesses.push(Guess::default());
                    names.len() - 1
                }
            };
            guesses[index].observe(value);
        }
    }
    Ok(names
        .iter()
        .zip(&guesses)
        .map(|(name, guess)| field(name, guess.data_type(), true))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn guess(values: &[Value]) -> DataType {
        let mut g = Guess::default();
        for v in values {
            g.observe(v);
        }
        g.data_type()
    }

    #[test]
    fn inference_is_conservative() {
        assert_eq!(
            guess(&[json!("1"), json!("-20"), json!("")]),
            DataType::Int64
        );
        assert_eq!(guess(&[json!("007")]), DataType::Text);
        assert_eq!(guess(&[json!("1.5"), json!("2")]), DataType::Float64);
        assert_eq!(guess(&[json!("true"), json!("FALSE")]), DataType::Boolean);
        assert_eq!(guess(&[json!("2024-02-29")]), DataType::Date);
        assert_eq!(guess(&[json!("2024-02-29 10:00:00")]), DataType::Timestamp);
        assert_eq!(
            guess(&[json!("2024-02-29T10:00:00+02:00")]),
            DataType::TimestampTz
        );
        assert_eq!(guess(&[json!(1), json!(2.5)]), DataType::Float64);
        assert_eq!(guess(&[json!({"a": 1}), json!([1])]), DataType::Json);
        assert_eq!(guess(&[json!(null)]), DataType::Text);
        assert_eq!(guess(&[json!("12"), json!("n/a")]), DataType::Text);
    }
}
