//! Unit tests of the mapping on real Arrow batches: renames, transforms, casts, paths, keys
//! and the errors found before reading. Each test builds its batches by hand, so a failure
//! points at one rule of the mapping rather than at a connector.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Float64Array, Int32Array,
    Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{Date32Type, Int32Type, Int64Type, Schema, TimestampMicrosecondType};
use lockstep_core::protocol::arrow_types::arrow_schema;
use lockstep_core::protocol::{DataType, FieldInfo, StreamInfo};
use lockstep_core::{DeletePolicy, EndpointSpec, FieldMapping, RejectLimit, SyncMode, SyncSpec};
use lockstep_expr::{self as expr, Expr};

use super::*;

fn field(name: &str, data_type: DataType, nullable: bool) -> FieldInfo {
    FieldInfo {
        name: name.into(),
        data_type,
        nullable,
        native_type: None,
    }
}

/// The stream every test maps from.
fn stream() -> StreamInfo {
    StreamInfo {
        name: "contacts".into(),
        fields: vec![
            field("id", DataType::Int64, false),
            field("email", DataType::Text, true),
            field("first_name", DataType::Text, true),
            field("last_name", DataType::Text, true),
            field("score_text", DataType::Text, true),
            field("score", DataType::Int64, true),
            field("small", DataType::Int32, true),
            field("price", DataType::Float64, true),
            field("level", DataType::Text, true),
            field("created_at", DataType::Timestamp, true),
            field("birth", DataType::Date, true),
            field("address", DataType::Json, true),
            field("payload", DataType::Text, true),
            field("active", DataType::Boolean, true),
            field("bytes", DataType::Binary, true),
            field("weird.name", DataType::Text, true),
        ],
        primary_key: vec!["id".into()],
        cursor_candidates: vec![],
    }
}

fn spec(fields: Vec<FieldMapping>, key: &[&str]) -> SyncSpec {
    SyncSpec {
        name: "s".into(),
        source: EndpointSpec {
            connection: "a".into(),
            stream: "contacts".into(),
        },
        destination: EndpointSpec {
            connection: "b".into(),
            stream: "people".into(),
        },
        mode: SyncMode::Full,
        cursor_field: None,
        key: key.iter().map(|k| k.to_string()).collect(),
        fields,
        batch_size: 10,
        delete: DeletePolicy::default(),
        max_rejected: RejectLimit::default(),
        use_ledger: true,
        two_way: None,
        cdc: None,
    }
}

fn copy(target: &str, source: &str) -> FieldMapping {
    FieldMapping::copy(target, source)
}

fn computed(target: &str, text: &str) -> FieldMapping {
    FieldMapping::computed(
        target,
        expr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}")),
    )
}

fn mapper(fields: Vec<FieldMapping>) -> Mapper {
    let mut fields = fields;
    fields.insert(0, copy("id", "id"));
    Mapper::new(&spec(fields, &[]), &stream()).unwrap_or_else(|e| panic!("{e}"))
}

fn mapper_err(fields: Vec<FieldMapping>) -> MappingError {
    let mut fields = fields;
    fields.insert(0, copy("id", "id"));
    Mapper::new(&spec(fields, &[]), &stream()).unwrap_err()
}

/// A batch of `id` 1..=n and the given columns of the stream.
fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let rows = columns.first().map_or(0, |(_, a)| a.len());
    let s = stream();
    let mut fields = vec![s.field("id").unwrap().clone()];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(1..=rows as i64))];
    for (name, array) in columns {
        fields.push(s.field(name).unwrap().clone());
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(arrow_schema(&fields)), arrays).unwrap()
}

fn text(values: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

fn json(values: &[Option<&str>]) -> ArrayRef {
    text(values)
}

/// Column `name` of a mapped batch as text values.
fn texts(out: &MappedBatch, name: &str) -> Vec<Option<String>> {
    let i = out.batch.schema().index_of(name).unwrap();
    let a = out.batch.column(i);
    (0..a.len())
        .map(|r| {
            crate::cast::text_at(
                a,
                r,
                DataType::from_arrow_field(out.batch.schema().field(i)).unwrap(),
            )
        })
        .collect()
}

fn some(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|v| Some(v.to_string())).collect()
}

fn reasons(out: &MappedBatch) -> Vec<(usize, String)> {
    out.rejected
        .iter()
        .map(|r| (r.row, r.reason.clone()))
        .collect()
}

fn logical(out: &MappedBatch, name: &str) -> DataType {
    let schema = out.batch.schema();
    DataType::from_arrow_field(schema.field(schema.index_of(name).unwrap())).unwrap()
}

// ---- Renames and keys (the original behaviour) -------------------------------------------

fn emails(values: Vec<Option<&str>>) -> RecordBatch {
    batch(vec![("email", text(&values))])
}

#[test]
fn renames_and_keys_follow_the_mapping() {
    let m = Mapper::new(
        &spec(vec![copy("person_id", "id"), copy("mail", "email")], &[]),
        &stream(),
    )
    .unwrap();
    assert_eq!(m.key(), ["person_id"]);
    assert_eq!(m.source_key(), ["id"]);
    assert_eq!(m.source_fields(), ["id", "email"]);
    let out = m.map(&emails(vec![Some("a@x"), None])).unwrap();
    assert_eq!(out.batch.schema().field(1).name(), "mail");
    assert_eq!(out.batch.num_rows(), 2);
    assert!(out.rejected.is_empty());
    assert_eq!(m.target_fields()[0].data_type, DataType::Int64);
    assert!(!m.target_fields()[0].nullable);
}

#[test]
fn an_empty_mapping_copies_every_field() {
    let m = Mapper::new(&spec(vec![], &[]), &stream()).unwrap();
    assert_eq!(m.target_fields().len(), stream().fields.len());
    assert_eq!(m.source_fields().len(), stream().fields.len());
    assert_eq!(m.key(), ["id"]);
}

#[test]
fn schema_problems_are_found_before_reading() {
    let e = Mapper::new(&spec(vec![copy("mail", "e_mail")], &["mail"]), &stream()).unwrap_err();
    assert!(
        e.to_string().contains("`e_mail`") && e.to_string().contains("id, email, first_name"),
        "{e}"
    );
    let e = Mapper::new(&spec(vec![copy("mail", "email")], &[]), &stream()).unwrap_err();
    assert!(matches!(e, MappingError::KeyNotMapped { .. }), "{e}");
    let e = Mapper::new(
        &spec(vec![copy("a", "id"), copy("a", "email")], &[]),
        &stream(),
    )
    .unwrap_err();
    assert!(matches!(e, MappingError::DuplicateTarget { .. }), "{e}");
    let e = Mapper::new(&spec(vec![], &["nope"]), &stream()).unwrap_err();
    assert!(matches!(e, MappingError::UnknownKey { .. }), "{e}");
}

#[test]
fn null_keys_are_rejected_per_row() {
    let m = Mapper::new(
        &spec(vec![copy("mail", "email"), copy("id", "id")], &["mail"]),
        &stream(),
    )
    .unwrap();
    assert_eq!(
        m.nullable_key_fields(),
        [("mail".to_owned(), "email".to_owned())]
    );
    let out = m
        .map(&emails(vec![Some("a@x"), None, Some("b@x")]))
        .unwrap();
    assert_eq!(out.batch.num_rows(), 2);
    assert_eq!(out.source_rows, vec![0, 2]);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].row, 1);
    assert_eq!(out.rejected[0].field.as_deref(), Some("mail"));
    assert_eq!(
        out.rejected[0].reason,
        "key field `mail` is null; every record needs a key"
    );
}

#[test]
fn a_source_field_with_a_dot_in_its_name_is_found_whole() {
    let m = mapper(vec![
        copy("w", "weird.name"),
        computed("u", "upper(`weird.name`)"),
    ]);
    let out = m
        .map(&batch(vec![("weird.name", text(&[Some("x")]))]))
        .unwrap();
    assert_eq!(texts(&out, "w"), some(&["x"]));
    assert_eq!(texts(&out, "u"), some(&["X"]));
}

// ---- String transforms -------------------------------------------------------------------

#[test]
fn string_transforms() {
    let m = mapper(vec![
        computed("lower", "lower(email)"),
        computed("upper", "upper(email)"),
        computed("trim", "trim(email)"),
        computed("ltrim", "ltrim(email)"),
        computed("rtrim", "rtrim(email)"),
        computed("replace", "replace(email, 'X', '-')"),
    ]);
    let out = m.map(&emails(vec![Some("  ÀbX@x.IO "), None])).unwrap();
    assert!(out.rejected.is_empty());
    assert_eq!(texts(&out, "lower")[0].as_deref(), Some("  àbx@x.io "));
    assert_eq!(texts(&out, "upper")[0].as_deref(), Some("  ÀBX@X.IO "));
    assert_eq!(texts(&out, "trim")[0].as_deref(), Some("ÀbX@x.IO"));
    assert_eq!(texts(&out, "ltrim")[0].as_deref(), Some("ÀbX@x.IO "));
    assert_eq!(texts(&out, "rtrim")[0].as_deref(), Some("  ÀbX@x.IO"));
    assert_eq!(texts(&out, "replace")[0].as_deref(), Some("  Àb-@x.IO "));
    // Null stays null, and the field is typed text.
    assert_eq!(texts(&out, "lower")[1], None);
    assert_eq!(logical(&out, "lower"), DataType::Text);
}

#[test]
fn concat_skips_nulls_and_converts_other_types() {
    let m = mapper(vec![
        computed("full_name", "concat(first_name, ' ', last_name)"),
        computed("tagged", "concat('C-', score, '/', active)"),
    ]);
    let out = m
        .map(&batch(vec![
            ("first_name", text(&[Some("Ada"), Some("Alan"), None])),
            ("last_name", text(&[Some("Lovelace"), None, None])),
            (
                "score",
                Arc::new(Int64Array::from(vec![Some(7), None, Some(-1)])),
            ),
            (
                "active",
                Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
            ),
        ]))
        .unwrap();
    assert_eq!(
        texts(&out, "full_name"),
        some(&["Ada Lovelace", "Alan ", " "])
    );
    assert_eq!(
        texts(&out, "tagged"),
        some(&["C-7/true", "C-/false", "C--1/"])
    );
    assert!(!m.target_fields()[1].nullable);
}

#[test]
fn split_gives_a_json_array() {
    let m = mapper(vec![computed("tags", "split(payload, ',')")]);
    let out = m
        .map(&batch(vec![(
            "payload",
            text(&[Some("a,b,,c"), Some(""), None]),
        )]))
        .unwrap();
    assert_eq!(logical(&out, "tags"), DataType::Json);
    assert_eq!(
        texts(&out, "tags"),
        vec![Some(r#"["a","b","","c"]"#.into()), Some("[]".into()), None]
    );
}

#[test]
fn defaults_and_constants() {
    let m = mapper(vec![
        computed("name", "default(first_name, 'anonymous')"),
        computed("first", "coalesce(first_name, last_name, '?')"),
        computed("small", "default(small, 0)"),
        computed("day", "default(birth, '2000-01-01')"),
        computed("source_system", "'crm'"),
        computed("version", "2"),
        computed("ratio", "0.5"),
        computed("flag", "true"),
    ]);
    let out = m
        .map(&batch(vec![
            ("first_name", text(&[Some("Ada"), None, None])),
            ("last_name", text(&[None, Some("Turing"), None])),
            (
                "small",
                Arc::new(Int32Array::from(vec![Some(3), None, None])),
            ),
            (
                "birth",
                Arc::new(Date32Array::from(vec![Some(0), None, None])),
            ),
        ]))
        .unwrap();
    assert_eq!(
        texts(&out, "name"),
        some(&["Ada", "anonymous", "anonymous"])
    );
    assert_eq!(texts(&out, "first"), some(&["Ada", "Turing", "?"]));
    // A constant default takes the type of the value it defaults.
    assert_eq!(logical(&out, "small"), DataType::Int32);
    assert_eq!(
        out.batch
            .column(3)
            .as_primitive::<Int32Type>()
            .values()
            .to_vec(),
        [3, 0, 0]
    );
    assert_eq!(logical(&out, "day"), DataType::Date);
    assert_eq!(
        texts(&out, "day"),
        some(&["1970-01-01", "2000-01-01", "2000-01-01"])
    );
    assert_eq!(texts(&out, "source_system"), some(&["crm", "crm", "crm"]));
    assert_eq!(logical(&out, "version"), DataType::Int64);
    assert_eq!(logical(&out, "ratio"), DataType::Float64);
    assert_eq!(logical(&out, "flag"), DataType::Boolean);
    let fields = m.target_fields();
    assert!(fields.iter().skip(1).all(|f| !f.nullable), "{fields:?}");

    let e = mapper_err(vec![computed("x", "null")]);
    assert!(e.to_string().contains("a constant null has no type"), "{e}");
    let e = mapper_err(vec![computed("x", "default(small, 'many')")]);
    assert!(matches!(e, MappingError::IncompatibleType { .. }), "{e}");
    assert!(e.to_string().contains("`many` is not an int32"), "{e}");
    let e = mapper_err(vec![computed("x", "coalesce(score, email)")]);
    assert!(
        e.to_string()
            .contains("`email` is text, but int64 is expected; convert it: cast(email, 'int64')"),
        "{e}"
    );
}

// ---- Value maps --------------------------------------------------------------------------

#[test]
fn value_maps_with_and_without_a_fallback() {
    let m = mapper(vec![
        computed("tier", "map(level, {'1': 'gold', '2': 'silver'}, 'bronze')"),
        computed("rank", "map(score, {'1': 10, '2': 20}, 0)"),
        computed("kept", "map(level, {'1': 'one'}, level)"),
    ]);
    let out = m
        .map(&batch(vec![
            ("level", text(&[Some("1"), Some("2"), Some("7"), None])),
            (
                "score",
                Arc::new(Int64Array::from(vec![Some(2), Some(1), Some(9), None])),
            ),
        ]))
        .unwrap();
    assert!(out.rejected.is_empty());
    assert_eq!(
        texts(&out, "tier"),
        some(&["gold", "silver", "bronze", "bronze"])
    );
    assert_eq!(logical(&out, "rank"), DataType::Int64);
    assert_eq!(texts(&out, "rank"), some(&["20", "10", "0", "0"]));
    assert_eq!(
        texts(&out, "kept"),
        vec![Some("one".into()), Some("2".into()), Some("7".into()), None]
    );

    // Without a fallback, a value the map does not have is rejected; null stays null.
    let m = mapper(vec![computed(
        "tier",
        "map(level, {'1': 'gold', '2': 'silver'})",
    )]);
    let out = m
        .map(&batch(vec![("level", text(&[Some("1"), Some("7"), None]))]))
        .unwrap();
    assert_eq!(
        reasons(&out),
        [(
            1,
            "field `tier`: `7` is not in the value map ('1', '2'); give a default for other values"
                .to_owned()
        )]
    );
    assert_eq!(out.rejected[0].field.as_deref(), Some("tier"));
    assert_eq!(texts(&out, "tier"), vec![Some("gold".into()), None]);

    let e = mapper_err(vec![computed("t", "map(level, {'1': 1}, 'x')")]);
    assert_eq!(
        e.to_string(),
        "field mapping of sync `s`: destination field `t`: the fallback of map(): `x` is not an \
         int64"
    );
    let e = mapper_err(vec![computed("t", "map(level, {'1': 1}, level)")]);
    assert!(
        e.to_string()
            .contains("`level` is text, but int64 is expected"),
        "{e}"
    );
}

// ---- Casts -------------------------------------------------------------------------------

#[test]
fn casts_fail_per_record_with_a_reason() {
    let m = mapper(vec![computed("score", "cast(score_text, 'int64')")]);
    assert_eq!(m.target_fields()[1].data_type, DataType::Int64);
    let out = m
        .map(&batch(vec![(
            "score_text",
            text(&[Some("42"), Some("abc"), None, Some("-7")]),
        )]))
        .unwrap();
    assert_eq!(
        reasons(&out),
        [(1, "field `score`: `abc` is not an int64".to_owned())]
    );
    assert_eq!(out.rejected[0].field.as_deref(), Some("score"));
    assert_eq!(out.source_rows, [0, 2, 3]);
    assert_eq!(logical(&out, "score"), DataType::Int64);
    let values: Vec<Option<i64>> = out
        .batch
        .column(1)
        .as_primitive::<Int64Type>()
        .iter()
        .collect();
    assert_eq!(values, [Some(42), None, Some(-7)]);
}

#[test]
fn casts_between_types() {
    let m = mapper(vec![
        computed("i", "cast(price, 'int32')"),
        computed("d", "cast(price, 'decimal(10,2)')"),
        computed("t", "cast(created_at, 'text')"),
        computed("day", "cast(created_at, 'date')"),
        computed("tz", "cast(created_at, 'timestamptz')"),
        computed("u", "cast(payload, 'uuid')"),
        computed("n", "cast(score, 'text')"),
        computed("b", "cast(active, 'int64')"),
    ]);
    let ts = 1_704_164_645_000_000; // 2024-01-02T03:04:05Z
    let out = m
        .map(&batch(vec![
            (
                "price",
                Arc::new(Float64Array::from(vec![Some(3.0), Some(3.7), Some(1e12)])),
            ),
            (
                "created_at",
                Arc::new(TimestampMicrosecondArray::from(vec![Some(ts), None, None])),
            ),
            (
                "payload",
                text(&[
                    Some("{6F9619FF-8B86-D011-B42D-00CF4FC964FF}"),
                    None,
                    Some("nope"),
                ]),
            ),
            (
                "score",
                Arc::new(Int64Array::from(vec![Some(5), None, None])),
            ),
            (
                "active",
                Arc::new(BooleanArray::from(vec![Some(true), None, None])),
            ),
        ]))
        .unwrap();
    assert_eq!(
        reasons(&out),
        [
            (
                1,
                "field `i`: `3.7` is not an int32 (it has a fractional part)".to_owned()
            ),
            (
                2,
                "field `i`: `1000000000000.0` is out of range for int32".to_owned()
            ),
        ]
    );
    assert_eq!(out.batch.num_rows(), 1);
    assert_eq!(texts(&out, "i"), some(&["3"]));
    assert_eq!(texts(&out, "d"), some(&["3.00"]));
    assert_eq!(texts(&out, "t"), some(&["2024-01-02T03:04:05"]));
    assert_eq!(logical(&out, "day"), DataType::Date);
    assert_eq!(texts(&out, "day"), some(&["2024-01-02"]));
    assert_eq!(logical(&out, "tz"), DataType::TimestampTz);
    assert_eq!(texts(&out, "tz"), some(&["2024-01-02T03:04:05Z"]));
    assert_eq!(logical(&out, "u"), DataType::Uuid);
    assert_eq!(
        texts(&out, "u"),
        some(&["6f9619ff-8b86-d011-b42d-00cf4fc964ff"])
    );
    assert_eq!(texts(&out, "n"), some(&["5"]));
    assert_eq!(texts(&out, "b"), some(&["1"]));

    // A row fails at its first failing field only, and other rows go on.
    let m = mapper(vec![
        computed("u", "cast(payload, 'uuid')"),
        computed("j", "cast(payload, 'json')"),
    ]);
    let out = m
        .map(&batch(vec![(
            "payload",
            text(&[Some("x"), Some("{\"a\":1}")]),
        )]))
        .unwrap();
    assert_eq!(
        reasons(&out),
        [
            (0, "field `u`: `x` is not a uuid".to_owned()),
            (1, "field `u`: `{\"a\":1}` is not a uuid".to_owned()),
        ]
    );
    let m = mapper(vec![computed("j", "cast(payload, 'json')")]);
    let out = m
        .map(&batch(vec![(
            "payload",
            text(&[Some("{\"a\":1}"), Some("{a")]),
        )]))
        .unwrap();
    assert_eq!(
        reasons(&out),
        [(1, "field `j`: `{a` is not valid JSON".to_owned())]
    );
    assert_eq!(logical(&out, "j"), DataType::Json);

    // Text to timestamps, with and without an offset.
    let m = mapper(vec![
        computed("tz", "cast(payload, 'timestamptz')"),
        computed("naive", "cast(email, 'timestamp')"),
    ]);
    let out = m
        .map(&batch(vec![
            (
                "payload",
                text(&[Some("2024-01-02T05:04:05+02:00"), Some("soon")]),
            ),
            ("email", text(&[Some("2024-01-02 03:04:05"), None])),
        ]))
        .unwrap();
    assert_eq!(texts(&out, "tz"), some(&["2024-01-02T03:04:05Z"]));
    assert_eq!(texts(&out, "naive"), some(&["2024-01-02T03:04:05"]));
    assert_eq!(
        reasons(&out),
        [(1, "field `tz`: `soon` is not a timestamptz".to_owned())]
    );
}

#[test]
fn impossible_casts_and_unknown_types_are_static_errors() {
    let e = mapper_err(vec![computed("x", "cast(birth, 'int64')")]);
    assert!(matches!(e, MappingError::IncompatibleType { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "field mapping of sync `s`: destination field `x`: cannot cast `birth`, a date, to int64"
    );
    let e = mapper_err(vec![computed("x", "cast(score, 'date')")]);
    assert!(
        e.to_string()
            .contains("for Unix seconds, write parse(cast(x, 'text'), '%s')"),
        "{e}"
    );
    // Built in code, past the parser's checks.
    let bad = Expr::call(
        "cast",
        vec![Expr::field("score").unwrap(), Expr::text("int65")],
    );
    let e = mapper_err(vec![FieldMapping::computed("x", bad)]);
    assert!(matches!(e, MappingError::InvalidExpression { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("unknown type `int65`; did you mean `int64`?"),
        "{e}"
    );
    let bad = Expr::call("lowr", vec![Expr::field("email").unwrap()]);
    let e = mapper_err(vec![FieldMapping::computed("x", bad)]);
    assert!(
        e.to_string()
            .contains("unknown function `lowr`; did you mean `lower`?"),
        "{e}"
    );
}

// ---- Dates and times ---------------------------------------------------------------------

#[test]
fn parse_and_format_dates() {
    let m = mapper(vec![
        computed("day", "parse(payload, '%d/%m/%Y')"),
        computed("at", "parse(first_name, '%Y-%m-%d %H:%M')"),
        computed("zoned", "parse(last_name, '%Y-%m-%dT%H:%M:%S%z')"),
        computed("unix", "parse(score_text, '%s')"),
        computed("signup_day", "format(created_at, '%Y-%m-%d')"),
        computed("birth_text", "format(birth, '%d %B %Y')"),
    ]);
    let ts = 1_704_164_645_000_000; // 2024-01-02T03:04:05
    let out = m
        .map(&batch(vec![
            ("payload", text(&[Some("31/12/2023"), Some("31/02/2024")])),
            ("first_name", text(&[Some("2024-01-02 03:04"), None])),
            (
                "last_name",
                text(&[Some("2024-01-02T05:04:05+02:00"), None]),
            ),
            ("score_text", text(&[Some("1704164645"), None])),
            (
                "created_at",
                Arc::new(TimestampMicrosecondArray::from(vec![Some(ts), None])),
            ),
            (
                "birth",
                Arc::new(Date32Array::from(vec![Some(19_723), None])),
            ),
        ]))
        .unwrap();
    assert_eq!(
        reasons(&out),
        [(
            1,
            "field `day`: `31/02/2024` is not a date in the format `%d/%m/%Y` (input is out of range)"
                .to_owned()
        )]
    );
    assert_eq!(logical(&out, "day"), DataType::Date);
    assert_eq!(
        out.batch.column(1).as_primitive::<Date32Type>().value(0),
        19_722
    );
    assert_eq!(logical(&out, "at"), DataType::Timestamp);
    assert_eq!(texts(&out, "at"), some(&["2024-01-02T03:04:00"]));
    assert_eq!(logical(&out, "zoned"), DataType::TimestampTz);
    assert_eq!(texts(&out, "zoned"), some(&["2024-01-02T03:04:05Z"]));
    assert_eq!(
        out.batch
            .column(4)
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        ts
    );
    assert_eq!(texts(&out, "signup_day"), some(&["2024-01-02"]));
    assert_eq!(texts(&out, "birth_text"), some(&["01 January 2024"]));

    let m = mapper(vec![computed("t", "parse(payload, '%H:%M')")]);
    let out = m
        .map(&batch(vec![(
            "payload",
            text(&[Some("07:30"), Some("7h")]),
        )]))
        .unwrap();
    assert_eq!(texts(&out, "t"), some(&["07:30:00"]));
    assert_eq!(
        reasons(&out),
        [(1, "field `t`: `7h` is not a time in the format `%H:%M` (input contains invalid characters)".to_owned())]
    );
}

#[test]
fn date_format_problems_are_static_errors() {
    let e = mapper_err(vec![computed("x", "format(birth, '%Y %H:%M')")]);
    assert!(matches!(e, MappingError::IncompatibleType { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("the format `%Y %H:%M` asks for fields that `birth`, a date, does not have"),
        "{e}"
    );
    let e = mapper_err(vec![computed("x", "format(payload, '%Y')")]);
    assert!(
        e.to_string().contains(
            "format() needs a date, time or timestamp, but `payload` is text; parse it first"
        ),
        "{e}"
    );
    let e = mapper_err(vec![computed("x", "parse(score, '%Y')")]);
    assert!(
        e.to_string()
            .contains("parse() needs text, but `score` is int64"),
        "{e}"
    );
}

// ---- Hashing -----------------------------------------------------------------------------

#[test]
fn hashes_in_hex() {
    let m = mapper(vec![
        computed("email_hash", "sha256(email)"),
        computed("fast", "xxh3(email)"),
        computed("n", "sha256(score)"),
        computed("raw", "sha256(bytes)"),
    ]);
    let out = m
        .map(&batch(vec![
            ("email", text(&[Some("abc"), None])),
            ("score", Arc::new(Int64Array::from(vec![Some(1), None]))),
            (
                "bytes",
                Arc::new(BinaryArray::from(vec![Some(b"abc".as_ref()), None])),
            ),
        ]))
        .unwrap();
    let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(texts(&out, "email_hash"), vec![Some(abc.into()), None]);
    assert_eq!(
        texts(&out, "fast"),
        vec![
            Some(format!("{:016x}", xxhash_rust::xxh3::xxh3_64(b"abc"))),
            None
        ]
    );
    assert_eq!(
        texts(&out, "n")[0].as_deref(),
        Some("6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b") // sha256("1")
    );
    assert_eq!(texts(&out, "raw")[0].as_deref(), Some(abc));
}

#[test]
fn binary_that_is_not_text_is_rejected_when_used_as_text() {
    let m = mapper(vec![
        computed("s", "concat(bytes)"),
        computed("h", "xxh3(bytes)"),
    ]);
    let out = m
        .map(&batch(vec![(
            "bytes",
            Arc::new(BinaryArray::from(vec![
                Some(b"ok".as_ref()),
                Some(&[0xff, 0xfe][..]),
            ])),
        )]))
        .unwrap();
    assert_eq!(texts(&out, "s"), some(&["ok"]));
    assert_eq!(
        reasons(&out),
        [(
            1,
            "field `s`: a binary value is not valid UTF-8 text".to_owned()
        )]
    );
}

#[test]
fn float32_values_read_as_written() {
    let mut s = stream();
    s.fields.push(field("f", DataType::Float32, true));
    let m = Mapper::new(
        &spec(vec![copy("id", "id"), computed("t", "concat(f)")], &[]),
        &s,
    )
    .unwrap();
    let schema = Arc::new(arrow_schema(&[
        s.field("id").unwrap().clone(),
        s.field("f").unwrap().clone(),
    ]));
    let b = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(arrow::array::Float32Array::from(vec![0.1f32, 2.0])),
        ],
    )
    .unwrap();
    assert_eq!(texts(&m.map(&b).unwrap(), "t"), some(&["0.1", "2.0"]));
}

// ---- Nested paths ------------------------------------------------------------------------

fn addresses() -> RecordBatch {
    batch(vec![(
        "address",
        json(&[
            Some(
                r#"{"city": "Paris", "zip": 75001, "lines": ["1 rue X", "2e"], "geo": {"lat": 1.5}}"#,
            ),
            Some(r#"{"city": null}"#),
            None,
            Some("{not json"),
        ]),
    )])
}

#[test]
fn paths_read_into_json_fields() {
    let m = mapper(vec![
        computed("city", "cast(address.city, 'text')"),
        computed("zip", "default(cast(address.zip, 'int64'), 0)"),
        computed("line1", "default(address.lines.0, null)"),
        computed("geo", "default(address.geo, null)"),
    ]);
    let out = m.map(&addresses()).unwrap();
    assert_eq!(
        reasons(&out),
        [(3, "field `city`: `source field `address``: `{not json` is not valid JSON (key must be a string at line 1 column 2)".to_owned())]
    );
    assert_eq!(texts(&out, "city"), vec![Some("Paris".into()), None, None]);
    assert_eq!(texts(&out, "zip"), some(&["75001", "0", "0"]));
    assert_eq!(logical(&out, "line1"), DataType::Json);
    assert_eq!(
        texts(&out, "line1"),
        vec![Some("\"1 rue X\"".into()), None, None]
    );
    assert_eq!(
        texts(&out, "geo"),
        vec![Some(r#"{"lat":1.5}"#.into()), None, None]
    );
}

#[test]
fn a_missing_path_is_rejected_unless_defaulted() {
    let m = mapper(vec![
        copy("city", "address.city"),
        copy("zip", "address.zip"),
    ]);
    assert_eq!(m.target_fields()[1].data_type, DataType::Json);
    assert_eq!(m.source_fields(), ["id", "address"]);
    let out = m
        .map(&batch(vec![(
            "address",
            json(&[
                Some(r#"{"city": "Paris", "zip": "75001"}"#),
                Some(r#"{"city": "Lyon"}"#),
                Some("[]"),
            ]),
        )]))
        .unwrap();
    assert_eq!(
        reasons(&out),
        [
            (
                1,
                "field `zip`: path `zip` is not in source field `address`; give a default to accept \
                 that"
                    .to_owned()
            ),
            (
                2,
                "field `city`: path `city` is not in source field `address`; give a default to \
                 accept that"
                    .to_owned()
            ),
        ]
    );
    assert_eq!(texts(&out, "city"), some(&["\"Paris\""]));
}

#[test]
fn paths_into_json_held_in_text() {
    let m = mapper(vec![computed(
        "b",
        "cast(get(cast(payload, 'json'), 'a.b'), 'int64')",
    )]);
    let out = m
        .map(&batch(vec![(
            "payload",
            text(&[Some(r#"{"a": {"b": 2}}"#), Some(r#"{"a": 1}"#)]),
        )]))
        .unwrap();
    assert_eq!(texts(&out, "b"), some(&["2"]));
    assert_eq!(reasons(&out)[0].0, 1);
    assert!(
        reasons(&out)[0]
            .1
            .contains("path `a.b` is not in `cast(payload, 'json')`"),
        "{:?}",
        reasons(&out)
    );
}

#[test]
fn a_path_into_a_field_that_is_not_json_is_a_static_error() {
    let e = mapper_err(vec![copy("city", "payload.city")]);
    assert!(matches!(e, MappingError::IncompatibleType { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "field mapping of sync `s`: destination field `city`: `payload.city` is a path into source \
         field `payload`, which is text, not json; paths read into json fields only (for JSON held \
         in text, write get(cast(payload, 'json'), 'city'))"
    );
    let e = mapper_err(vec![copy("x", "score.value")]);
    assert!(e.to_string().contains("which is int64, not json"), "{e}");
    let e = mapper_err(vec![copy("x", "nothing.value")]);
    assert!(matches!(e, MappingError::UnknownSourceField { .. }), "{e}");
}

#[test]
fn dotted_destinations_build_a_json_field() {
    let m = mapper(vec![
        copy("props.score", "score"),
        computed("name", "first_name"),
        computed("props.tier", "map(level, {'1': 'gold'}, 'bronze')"),
        computed("props.meta.source", "'crm'"),
        computed("props.meta.at", "created_at"),
        computed("props.address", "address"),
        copy("`a.b`", "email"),
    ]);
    let fields = m.target_fields();
    assert_eq!(
        fields
            .iter()
            .map(|f| (f.name.as_str(), f.data_type))
            .collect::<Vec<_>>(),
        [
            ("id", DataType::Int64),
            ("props", DataType::Json),
            ("name", DataType::Text),
            ("a.b", DataType::Text)
        ]
    );
    assert_eq!(
        m.describe()[1],
        ("props.score".to_owned(), "score".to_owned())
    );
    let out = m
        .map(&batch(vec![
            ("score", Arc::new(Int64Array::from(vec![Some(5), None]))),
            ("level", text(&[Some("1"), Some("3")])),
            (
                "created_at",
                Arc::new(TimestampMicrosecondArray::from(vec![Some(0), None])),
            ),
            ("address", json(&[Some(r#"{"city":"Paris"}"#), None])),
            ("first_name", text(&[Some("Ada"), None])),
            ("email", text(&[Some("a@x"), None])),
        ]))
        .unwrap();
    assert_eq!(logical(&out, "props"), DataType::Json);
    let props: Vec<serde_json::Value> = texts(&out, "props")
        .into_iter()
        .map(|v| serde_json::from_str(&v.unwrap()).unwrap())
        .collect();
    assert_eq!(
        props[0],
        serde_json::json!({
            "score": 5,
            "tier": "gold",
            "meta": {"source": "crm", "at": "1970-01-01T00:00:00"},
            "address": {"city": "Paris"}
        })
    );
    assert_eq!(
        props[1],
        serde_json::json!({"score": null, "tier": "bronze", "meta": {"source": "crm", "at": null}, "address": null})
    );
    assert_eq!(texts(&out, "a.b"), vec![Some("a@x".into()), None]);
}

#[test]
fn conflicting_and_duplicate_destinations() {
    let e = mapper_err(vec![copy("props", "score"), copy("props.x", "email")]);
    assert!(matches!(e, MappingError::ConflictingTarget { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "field mapping of sync `s`: `props.x` conflicts with `props`: `props` cannot be both a \
         value and a JSON object built from paths; keep one"
    );
    assert_eq!(e.target(), Some("props.x"));
    let e = mapper_err(vec![copy("props.x", "email"), copy("props", "score")]);
    assert!(
        e.to_string()
            .contains("`props` conflicts with `props.x`: `props` cannot"),
        "{e}"
    );
    assert_eq!(e.target(), Some("props"));
    let e = mapper_err(vec![copy("p.a", "email"), copy("p.a.b", "score")]);
    assert!(
        e.to_string()
            .contains("`p.a.b` conflicts with `p.a`: `p.a` cannot"),
        "{e}"
    );
    let e = mapper_err(vec![copy("p.a.b", "email"), copy("p.a", "score")]);
    assert!(
        e.to_string()
            .contains("`p.a` conflicts with `p.a.b`: `p.a` cannot"),
        "{e}"
    );
    let e = mapper_err(vec![copy("p.a", "email"), copy("p.a", "score")]);
    assert!(matches!(e, MappingError::DuplicateTarget { .. }), "{e}");
    let e = mapper_err(vec![copy("p..a", "email")]);
    assert!(e.to_string().contains("invalid destination name"), "{e}");
}

// ---- Computed keys -----------------------------------------------------------------------

#[test]
fn computed_match_keys() {
    let s = spec(
        vec![
            copy("email", "email"),
            computed("email_key", "lower(trim(email))"),
        ],
        &["email_key"],
    );
    let m = Mapper::new(&s, &stream()).unwrap();
    assert_eq!(m.key(), ["email_key"]);
    // Reads are ordered by the source's primary key, which the mapping reads too.
    assert_eq!(m.source_key(), ["id"]);
    assert_eq!(m.source_fields(), ["email", "id"]);
    assert!(!m.target_fields()[1].nullable);
    let out = m
        .map(&emails(vec![Some(" Ada@X.io"), None, Some("bob@x.io ")]))
        .unwrap();
    assert_eq!(texts(&out, "email_key"), some(&["ada@x.io", "bob@x.io"]));
    assert_eq!(
        reasons(&out),
        [(
            1,
            "key field `email_key` is null; every record needs a key".to_owned()
        )]
    );
    let keys = lockstep_core::record_keys(&out.batch, m.key()).unwrap();
    assert_eq!(keys, [r#"["ada@x.io"]"#, r#"["bob@x.io"]"#]);

    // The key alone, for a key-set reconciliation, gives the same keys.
    let keys_only = m.key_mapper();
    assert_eq!(keys_only.source_fields(), ["email", "id"]);
    assert_eq!(keys_only.target_fields().len(), 1);
    let out = keys_only
        .map(&emails(vec![Some(" Ada@X.io"), None, Some("bob@x.io ")]))
        .unwrap();
    assert_eq!(
        lockstep_core::record_keys(&out.batch, keys_only.key()).unwrap(),
        keys
    );
    assert_eq!(out.rejected.len(), 1);

    // Without a primary key, reads are ordered by what the key is computed from.
    let mut no_pk = stream();
    no_pk.primary_key.clear();
    let m = Mapper::new(&s, &no_pk).unwrap();
    assert_eq!(m.source_key(), ["email"]);

    let e = Mapper::new(
        &spec(vec![computed("k", "'x'"), copy("id", "id")], &["k"]),
        &stream(),
    )
    .unwrap_err();
    assert!(matches!(e, MappingError::InvalidKey { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("key field `k` is the constant `'x'`"),
        "{e}"
    );
    let e = Mapper::new(&spec(vec![copy("p.a", "email")], &["p"]), &stream()).unwrap_err();
    assert!(
        e.to_string()
            .contains("key field `p` is a JSON object built from paths (`p.a`)"),
        "{e}"
    );
    let e = Mapper::new(&spec(vec![copy("p.a", "email")], &["p.a"]), &stream()).unwrap_err();
    assert!(matches!(e, MappingError::UnknownKey { .. }), "{e}");
}

// ---- Static type errors ------------------------------------------------------------------

#[test]
fn type_errors_are_found_before_reading() {
    let e = mapper_err(vec![computed("x", "lower(score)")]);
    assert!(matches!(e, MappingError::IncompatibleType { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "field mapping of sync `s`: destination field `x`: lower() needs text, but `score` is \
         int64; convert it first: lower(cast(score, 'text'))"
    );
    let e = mapper_err(vec![computed("x", "lower(trim(emial))")]);
    assert_eq!(
        e.to_string(),
        "field mapping of sync `s`: `x` reads source field `emial`, which stream `contacts` does \
         not have; its fields are: id, email, first_name, last_name, score_text, score, small, \
         price, level, created_at, birth, address, payload, active, bytes, weird.name"
    );
    let e = mapper_err(vec![computed("x", "map(bytes, {'a': 'b'})")]);
    assert!(
        e.to_string()
            .contains("map() looks values up by their text, but `bytes` is binary"),
        "{e}"
    );
    let e = mapper_err(vec![computed("x", "get(email, 'a')")]);
    assert!(
        e.to_string()
            .contains("get() reads a path in json, but `email` is text"),
        "{e}"
    );
    let e = Mapper::new(
        &SyncSpec {
            cursor_field: Some("updated".into()),
            ..spec(vec![], &[])
        },
        &stream(),
    )
    .unwrap_err();
    assert!(matches!(e, MappingError::UnknownCursor { .. }), "{e}");
}

#[test]
fn json_and_uuid_values_work_as_text() {
    let mut s = stream();
    s.fields.push(field("uid", DataType::Uuid, true));
    let m = Mapper::new(
        &spec(
            vec![
                copy("id", "id"),
                computed("city", "upper(address.city)"),
                computed("u", "upper(uid)"),
            ],
            &[],
        ),
        &s,
    )
    .unwrap();
    let schema = Arc::new(arrow_schema(&[
        s.field("id").unwrap().clone(),
        s.field("address").unwrap().clone(),
        s.field("uid").unwrap().clone(),
    ]));
    let b = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1])),
            json(&[Some(r#"{"city":"paris"}"#)]),
            text(&[Some("6f9619ff-8b86-d011-b42d-00cf4fc964ff")]),
        ],
    )
    .unwrap();
    let out = m.map(&b).unwrap();
    assert_eq!(texts(&out, "city"), some(&["PARIS"]));
    assert_eq!(
        texts(&out, "u"),
        some(&["6F9619FF-8B86-D011-B42D-00CF4FC964FF"])
    );
}

#[test]
fn source_columns_in_other_arrow_forms_are_normalized() {
    // A connector may send Int32 as Int16, text as LargeUtf8: the mapping gives the declared
    // Arrow types.
    let m = mapper(vec![copy("small", "small"), computed("e", "lower(email)")]);
    let schema = Schema::new(vec![
        arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, false),
        arrow::datatypes::Field::new("small", arrow::datatypes::DataType::Int16, true),
        arrow::datatypes::Field::new("email", arrow::datatypes::DataType::LargeUtf8, true),
    ]);
    let b = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(arrow::array::Int16Array::from(vec![Some(4)])),
            Arc::new(arrow::array::LargeStringArray::from(vec![Some("A")])),
        ],
    )
    .unwrap();
    let out = m.map(&b).unwrap();
    assert_eq!(out.batch.schema(), m.schema());
    assert_eq!(texts(&out, "small"), some(&["4"]));
    assert_eq!(texts(&out, "e"), some(&["a"]));
    // A column the mapping needs is missing from the batch.
    let e = m.map(&emails(vec![Some("x")])).unwrap_err();
    assert_eq!(e, MappingError::MissingColumn("small".into()));
}

#[test]
fn each_rejected_row_is_rejected_once_in_row_order() {
    let m = mapper(vec![
        computed("a", "cast(score_text, 'int64')"),
        computed("b", "cast(payload, 'int64')"),
    ]);
    let out = m
        .map(&batch(vec![
            (
                "score_text",
                text(&[Some("1"), Some("x"), Some("y"), Some("4")]),
            ),
            (
                "payload",
                text(&[Some("z"), Some("w"), Some("3"), Some("4")]),
            ),
        ]))
        .unwrap();
    assert_eq!(
        reasons(&out),
        [
            (0, "field `b`: `z` is not an int64".to_owned()),
            (1, "field `a`: `x` is not an int64".to_owned()),
            (2, "field `a`: `y` is not an int64".to_owned()),
        ]
    );
    assert_eq!(out.source_rows, [3]);
    assert_eq!(out.batch.num_rows(), 1);
}

#[test]
fn an_empty_batch_maps_to_an_empty_batch() {
    let m = mapper(vec![computed("k", "lower(email)"), copy("p.x", "score")]);
    let out = m.map(&emails(vec![])).unwrap_err();
    // The batch lacks `score`.
    assert_eq!(out, MappingError::MissingColumn("score".into()));
    let out = m
        .map(&batch(vec![
            ("email", text(&[])),
            ("score", Arc::new(Int64Array::from(Vec::<i64>::new()))),
        ]))
        .unwrap();
    assert_eq!(out.batch.num_rows(), 0);
    assert!(out.rejected.is_empty());
}
