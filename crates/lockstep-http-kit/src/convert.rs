//! JSON records to Arrow batches from a declared list of fields, and back.
//!
//! Each [`JsonField`] names a column, its logical type and where its value sits in a record
//! (a JSON pointer such as `/properties/email`). Conversion goes through the SDK's `rows`
//! helpers, which coerce by logical type (numbers from numeric text, booleans from
//! `"true"`, timestamps from RFC 3339), after two normalisations that APIs which send every
//! value as text need:
//!
//! - an empty string is null for every type but text (an unset number arrives as `""`);
//! - a timestamp or date given as a number, or as text of digits only, is milliseconds since
//!   the Unix epoch.
//!
//! Back to JSON, [`ValueStyle`] says whether values travel as JSON types or as text, and how
//! nulls are written.
//!
//! Invariant: a value that does not fit its field is an error naming the row, the field and
//! the problem, never a null; a column of a batch that no field declares is an error, never
//! silently left out.

use chrono::{DateTime, Utc};
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::rows::{self, RowError};
use lockstep_plugin_sdk::{ConnectorError, DataType, FieldInfo};
use serde_json::{Map, Value};

/// A field and where its value sits in a JSON record.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonField {
    pub field: FieldInfo,
    /// A JSON pointer (RFC 6901) into the record: `/id`, `/properties/email`.
    pub pointer: String,
}

impl JsonField {
    /// A field at the top level of the record, under its own name.
    pub fn top_level(field: FieldInfo) -> Self {
        let pointer = format!("/{}", escape_pointer(&field.name));
        Self { field, pointer }
    }

    /// A field at `pointer`.
    pub fn at(field: FieldInfo, pointer: impl Into<String>) -> Self {
        Self {
            field,
            pointer: pointer.into(),
        }
    }
}

/// The fields a read asks for (`requested`, the request's `fields`), in the order of `all`:
/// every field when it names none. A name that no field of `all` has is refused with the
/// error `unknown` makes from it and the fields there are.
pub fn select_fields<E>(
    all: Vec<JsonField>,
    requested: Option<&[String]>,
    unknown: impl FnOnce(&str, &[JsonField]) -> E,
) -> Result<Vec<JsonField>, E> {
    let Some(names) = requested else {
        return Ok(all);
    };
    if let Some(name) = names
        .iter()
        .find(|name| !all.iter().any(|f| &f.field.name == *name))
    {
        return Err(unknown(name, &all));
    }
    Ok(all
        .into_iter()
        .filter(|f| names.contains(&f.field.name))
        .collect())
}

/// Escapes a name for use as one JSON pointer segment.
pub fn escape_pointer(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// Builds a batch with one column per field from JSON records.
pub fn batch_from_json(fields: &[JsonField], records: &[Value]) -> Result<RecordBatch, RowError> {
    let infos: Vec<FieldInfo> = fields.iter().map(|f| f.field.clone()).collect();
    let rows = records
        .iter()
        .enumerate()
        .map(|(row, record)| {
            fields
                .iter()
                .map(|f| {
                    let value = record.pointer(&f.pointer).unwrap_or(&Value::Null);
                    normalise(value, f.field.data_type)
                        .map(|v| (f.field.name.clone(), v))
                        .map_err(|reason| RowError {
                            row,
                            field: f.field.name.clone(),
                            reason,
                        })
                })
                .collect::<Result<Map<String, Value>, RowError>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    rows::batch_from_rows(&infos, &rows)
}

fn normalise(value: &Value, data_type: DataType) -> Result<Value, String> {
    Ok(match (value, data_type) {
        (Value::String(s), t) if s.is_empty() && !matches!(t, DataType::Text | DataType::Json) => {
            Value::Null
        }
        (Value::Number(n), DataType::Timestamp | DataType::TimestampTz | DataType::Date) => {
            millis_to_text(n.as_i64(), data_type)?
        }
        (Value::String(s), DataType::Timestamp | DataType::TimestampTz | DataType::Date)
            if s.bytes().all(|b| b.is_ascii_digit()) && s.len() > 8 =>
        {
            millis_to_text(s.parse().ok(), data_type)?
        }
        _ => value.clone(),
    })
}

fn millis_to_text(millis: Option<i64>, data_type: DataType) -> Result<Value, String> {
    let at = millis
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .ok_or_else(|| "milliseconds since the epoch out of range".to_string())?;
    Ok(Value::String(match data_type {
        DataType::Date => at.format("%Y-%m-%d").to_string(),
        _ => at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }))
}

/// How values travel back to JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ValueStyle {
    /// Every non-null value as text (`"42"`, `"true"`), as APIs that store text expect.
    pub as_text: bool,
    /// What a null becomes.
    pub nulls: NullStyle,
}

impl ValueStyle {
    /// The keys of a delete: every value as text (the form an id takes in a URL or a
    /// request body), a null left out (it names no record).
    pub const KEYS: ValueStyle = ValueStyle::text(NullStyle::Omit);

    /// Every value as text, nulls as `nulls` says: the style of APIs that store text.
    pub const fn text(nulls: NullStyle) -> ValueStyle {
        ValueStyle {
            as_text: true,
            nulls,
        }
    }
}

/// What a null value becomes in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NullStyle {
    /// `null`.
    #[default]
    Null,
    /// The key is left out (the server keeps its value).
    Omit,
    /// `""` (the way some APIs clear a value).
    EmptyString,
}

/// A batch's column that no declared field names.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "the batch has a column `{column}` that the stream does not declare; declare it or leave \
     it out of the mapping"
)]
pub struct UndeclaredColumn {
    pub column: String,
}

/// A batch that does not fit the stream's fields is a `schema` error.
impl From<UndeclaredColumn> for ConnectorError {
    fn from(e: UndeclaredColumn) -> Self {
        ConnectorError::schema(e.to_string())
    }
}

/// The records of a batch, each value placed at its field's pointer.
pub fn json_from_batch(
    fields: &[JsonField],
    batch: &RecordBatch,
    style: ValueStyle,
) -> Result<Vec<Value>, UndeclaredColumn> {
    let schema = batch.schema();
    let mut placed = Vec::with_capacity(schema.fields().len());
    for column in schema.fields() {
        let field = fields
            .iter()
            .find(|f| f.field.name == *column.name())
            .ok_or_else(|| UndeclaredColumn {
                column: column.name().clone(),
            })?;
        placed.push(field);
    }
    Ok(rows::rows_from_batch(batch)
        .into_iter()
        .map(|row| {
            let mut record = Value::Object(Map::new());
            for field in &placed {
                let value = row.get(&field.field.name).cloned().unwrap_or(Value::Null);
                let value = match (value, style.nulls) {
                    (Value::Null, NullStyle::Omit) => continue,
                    (Value::Null, NullStyle::EmptyString) => Value::String(String::new()),
                    (Value::Null, NullStyle::Null) => Value::Null,
                    (Value::String(s), _) => Value::String(s),
                    (other, _) if style.as_text => Value::String(other.to_string()),
                    (other, _) => other,
                };
                place(&mut record, &field.pointer, value);
            }
            record
        })
        .collect())
}

/// Puts `value` at `pointer` in `record`, creating the objects on the way.
fn place(record: &mut Value, pointer: &str, value: Value) {
    let segments: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some((last, path)) = segments.split_last() else {
        *record = value;
        return;
    };
    let mut node = record;
    for segment in path {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        node = node
            .as_object_mut()
            .expect("made an object just above")
            .entry(segment.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    node.as_object_mut()
        .expect("made an object just above")
        .insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(name: &str, data_type: DataType, pointer: &str) -> JsonField {
        JsonField::at(
            FieldInfo {
                name: name.into(),
                data_type,
                nullable: true,
                native_type: None,
            },
            pointer,
        )
    }

    fn fields() -> Vec<JsonField> {
        vec![
            field("id", DataType::Text, "/id"),
            field("email", DataType::Text, "/properties/email"),
            field("revenue", DataType::Float64, "/properties/revenue"),
            field("vip", DataType::Boolean, "/properties/vip"),
            field("modified", DataType::TimestampTz, "/properties/modified"),
            field("born", DataType::Date, "/properties/born"),
        ]
    }

    #[test]
    fn text_encoded_records_become_typed_columns_and_come_back() {
        let records = vec![
            json!({"id": "1", "properties": {"email": "a@x.io", "revenue": "12.5", "vip": "true",
                   "modified": "2024-05-01T10:00:00.123Z", "born": "1990-02-03"}}),
            json!({"id": "2", "properties": {"email": "b@x.io", "revenue": "", "vip": null,
                   "modified": 1714557600123i64, "born": "634003200000"}}),
        ];
        let batch = batch_from_json(&fields(), &records).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let back = json_from_batch(&fields(), &batch, ValueStyle::default()).unwrap();
        assert_eq!(back[0]["properties"]["revenue"], json!(12.5));
        assert_eq!(back[0]["properties"]["vip"], json!(true));
        assert_eq!(
            back[0]["properties"]["modified"],
            json!("2024-05-01T10:00:00.123000Z")
        );
        assert_eq!(back[1]["properties"]["revenue"], Value::Null);
        assert_eq!(
            back[1]["properties"]["modified"],
            json!("2024-05-01T10:00:00.123000Z")
        );
        assert_eq!(back[1]["properties"]["born"], json!("1990-02-03"));
        let text = json_from_batch(&fields(), &batch, ValueStyle::KEYS).unwrap();
        assert_eq!(text[0]["properties"]["revenue"], json!("12.5"));
        assert_eq!(text[0]["properties"]["vip"], json!("true"));
        assert!(text[1]["properties"].get("revenue").is_none());
        assert_eq!(text[1]["id"], json!("2"));
    }

    #[test]
    fn a_value_that_does_not_fit_names_row_and_field() {
        let records = vec![
            json!({"id": "1", "properties": {}}),
            json!({"id": "2", "properties": {"revenue": "a lot"}}),
        ];
        let e = batch_from_json(&fields(), &records).unwrap_err();
        assert_eq!((e.row, e.field.as_str()), (1, "revenue"), "{e}");
        assert!(e.reason.contains("a lot"), "{e}");
    }

    #[test]
    fn an_undeclared_column_is_an_error() {
        let batch = batch_from_json(&fields()[..2], &[json!({"id": "1"})]).unwrap();
        let e = json_from_batch(&fields()[..1], &batch, ValueStyle::default()).unwrap_err();
        assert_eq!(e.column, "email");
        let e = ConnectorError::from(e);
        assert_eq!(e.kind, lockstep_plugin_sdk::ErrorKind::SCHEMA);
    }

    #[test]
    fn a_read_selects_the_fields_it_names_in_the_streams_order() {
        let names = |fields: Vec<JsonField>| -> Vec<String> {
            fields.into_iter().map(|f| f.field.name).collect()
        };
        let unknown = |name: &str, all: &[JsonField]| format!("no `{name}` among {}", all.len());
        assert_eq!(
            names(select_fields(fields(), None, unknown).unwrap()).len(),
            6
        );
        let asked = ["vip".to_owned(), "id".to_owned()];
        let picked = select_fields(fields(), Some(&asked), unknown).unwrap();
        assert_eq!(names(picked), ["id", "vip"]);
        let asked = ["id".to_owned(), "nope".to_owned()];
        let e = select_fields(fields(), Some(&asked), unknown).unwrap_err();
        assert_eq!(e, "no `nope` among 6");
    }
}
