//! Declared SQLite column types: their affinity, the logical type they map to, and the
//! declared type a created column gets for each logical type.
//!
//! The two directions agree: for every logical type `t`, `logical_type(declared_type(t)) == t`,
//! so a table the connector creates discovers back to the same logical types.

use lockstep_plugin_sdk::DataType;

/// SQLite's column affinity (https://www.sqlite.org/datatype3.html#affinity_name_examples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    /// The affinity SQLite derives from a declared type, by its substring rules.
    pub(crate) fn of(declared: &str) -> Affinity {
        let upper = declared.to_ascii_uppercase();
        if upper.contains("INT") {
            Affinity::Integer
        } else if upper.contains("CHAR") || upper.contains("CLOB") || upper.contains("TEXT") {
            Affinity::Text
        } else if upper.contains("BLOB") || upper.trim().is_empty() {
            Affinity::Blob
        } else if upper.contains("REAL") || upper.contains("FLOA") || upper.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }

    /// Whether SQLite converts numeric-looking text stored in such a column to a number.
    pub(crate) fn converts_text(self) -> bool {
        matches!(self, Affinity::Integer | Affinity::Real | Affinity::Numeric)
    }
}

/// A declared type split into its upper-cased name (inner whitespace collapsed) and its
/// numeric arguments: `numeric ( 10, 2 )` is `("NUMERIC", [10, 2])`.
fn split_declared(declared: &str) -> (String, Option<Vec<i64>>) {
    let upper = declared.trim().to_ascii_uppercase();
    let (name, args) = match upper.split_once('(') {
        Some((name, rest)) => {
            let inner = rest.trim_end().trim_end_matches(')');
            let args: Option<Vec<i64>> = inner
                .split(',')
                .map(|a| a.trim().trim_start_matches('+').parse::<i64>().ok())
                .collect();
            (name.to_owned(), Some(args.unwrap_or_default()))
        }
        None => (upper, None),
    };
    let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
    (name, args)
}

/// The logical type of a column with declared type `declared`: common type names first, then
/// SQLite's affinity rules. A declared type with no name is text.
pub(crate) fn logical_type(declared: &str) -> DataType {
    let (name, args) = split_declared(declared);
    match name.as_str() {
        "" => return DataType::Text,
        "BOOLEAN" | "BOOL" => return DataType::Boolean,
        "INT4" | "INT32" => return DataType::Int32,
        "INTEGER" | "INT" | "BIGINT" | "INT8" | "INT64" | "SMALLINT" | "TINYINT" | "MEDIUMINT"
        | "INT2" => return DataType::Int64,
        "FLOAT4" | "FLOAT32" | "REAL4" => return DataType::Float32,
        "REAL" | "DOUBLE" | "DOUBLE PRECISION" | "FLOAT" | "FLOAT8" | "FLOAT64" => {
            return DataType::Float64
        }
        "NUMERIC" | "DECIMAL" | "NUMERIC_TEXT" | "DECIMAL_TEXT" => {
            return decimal(args.as_deref()).unwrap_or(DataType::Float64);
        }
        "TEXT" | "VARCHAR" | "CHAR" | "CLOB" | "CHARACTER" | "NVARCHAR" | "NCHAR" | "STRING"
        | "VARYING CHARACTER" | "NATIVE CHARACTER" | "CHARACTER VARYING" => return DataType::Text,
        "BLOB" | "BYTEA" | "BINARY" | "VARBINARY" => return DataType::Binary,
        "DATE" => return DataType::Date,
        "TIME" | "TIME WITHOUT TIME ZONE" => return DataType::Time,
        "DATETIME" | "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE" => return DataType::Timestamp,
        "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" | "DATETIMETZ" | "DATETIMEOFFSET" => {
            return DataType::TimestampTz
        }
        "UUID" | "GUID" | "UNIQUEIDENTIFIER" => return DataType::Uuid,
        "JSON" | "JSON_TEXT" => return DataType::Json,
        _ => {}
    }
    match Affinity::of(declared) {
        Affinity::Integer => DataType::Int64,
        Affinity::Real => DataType::Float64,
        Affinity::Blob => DataType::Binary,
        // Text is the lossless choice for text and for unknown numeric names alike.
        Affinity::Text | Affinity::Numeric => DataType::Text,
    }
}

/// `decimal(p, s)` from declared arguments, when they fit Arrow's Decimal128.
fn decimal(args: Option<&[i64]>) -> Option<DataType> {
    let (precision, scale) = match args? {
        [p] => (*p, 0),
        [p, s] => (*p, *s),
        _ => return None,
    };
    if !(1..=38).contains(&precision) || scale > precision || scale < -38 {
        return None;
    }
    Some(DataType::Decimal {
        precision: precision as u8,
        scale: scale as i8,
    })
}

/// The largest decimal precision stored with NUMERIC affinity: SQLite keeps 15 significant
/// digits of a REAL exactly, so wider decimals are stored as exact text instead.
pub(crate) const MAX_NUMERIC_PRECISION: u8 = 15;

/// The declared type of a column the connector creates for logical type `t`.
pub(crate) fn declared_type(t: DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int32 => "INT4".into(),
        DataType::Int64 => "INTEGER".into(),
        DataType::Float32 => "FLOAT4".into(),
        DataType::Float64 => "REAL".into(),
        DataType::Decimal { precision, scale } if precision <= MAX_NUMERIC_PRECISION => {
            format!("NUMERIC({precision},{scale})")
        }
        // TEXT affinity (the name contains TEXT), so SQLite keeps every digit.
        DataType::Decimal { precision, scale } => format!("DECIMAL_TEXT({precision},{scale})"),
        DataType::Text => "TEXT".into(),
        DataType::Binary => "BLOB".into(),
        DataType::Date => "DATE".into(),
        DataType::Time => "TIME".into(),
        DataType::Timestamp => "TIMESTAMP".into(),
        DataType::TimestampTz => "TIMESTAMPTZ".into(),
        DataType::Uuid => "UUID".into(),
        // TEXT affinity, so that a JSON number document such as `1.50` is kept as written.
        DataType::Json => "JSON_TEXT".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_map_by_name_then_affinity() {
        let cases = [
            ("INTEGER", DataType::Int64),
            ("int", DataType::Int64),
            ("BIGINT", DataType::Int64),
            ("unsigned big int", DataType::Int64),
            ("BOOLEAN", DataType::Boolean),
            ("bool", DataType::Boolean),
            ("REAL", DataType::Float64),
            ("double precision", DataType::Float64),
            ("FLOAT", DataType::Float64),
            (
                "NUMERIC(10,2)",
                DataType::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
            (
                "decimal ( 38 , 10 )",
                DataType::Decimal {
                    precision: 38,
                    scale: 10,
                },
            ),
            (
                "DECIMAL(5)",
                DataType::Decimal {
                    precision: 5,
                    scale: 0,
                },
            ),
            ("NUMERIC", DataType::Float64),
            ("NUMERIC(60,2)", DataType::Float64),
            ("TEXT", DataType::Text),
            ("VARCHAR(255)", DataType::Text),
            ("nvarchar(10)", DataType::Text),
            ("CHAR(3)", DataType::Text),
            ("CLOB", DataType::Text),
            ("BLOB", DataType::Binary),
            ("DATE", DataType::Date),
            ("TIME", DataType::Time),
            ("DATETIME", DataType::Timestamp),
            ("TIMESTAMP", DataType::Timestamp),
            ("TIMESTAMPTZ", DataType::TimestampTz),
            ("timestamp with time zone", DataType::TimestampTz),
            ("UUID", DataType::Uuid),
            ("JSON", DataType::Json),
            ("", DataType::Text),
            ("MONEY", DataType::Text),
            ("MEDIUMBLOB", DataType::Binary),
            ("LONGTEXT", DataType::Text),
            ("DOUBLE_THING", DataType::Float64),
        ];
        for (declared, expected) in cases {
            assert_eq!(logical_type(declared), expected, "{declared}");
        }
    }

    #[test]
    fn created_types_discover_back_to_themselves() {
        let all = [
            DataType::Boolean,
            DataType::Int32,
            DataType::Int64,
            DataType::Float32,
            DataType::Float64,
            DataType::Decimal {
                precision: 10,
                scale: 2,
            },
            DataType::Decimal {
                precision: 38,
                scale: 10,
            },
            DataType::Decimal {
                precision: 20,
                scale: -2,
            },
            DataType::Text,
            DataType::Binary,
            DataType::Date,
            DataType::Time,
            DataType::Timestamp,
            DataType::TimestampTz,
            DataType::Uuid,
            DataType::Json,
        ];
        for t in all {
            assert_eq!(logical_type(&declared_type(t)), t, "{}", declared_type(t));
        }
        assert_eq!(Affinity::of("DECIMAL_TEXT(38,10)"), Affinity::Text);
        assert_eq!(Affinity::of("JSON_TEXT"), Affinity::Text);
        assert_eq!(Affinity::of("NUMERIC(10,2)"), Affinity::Numeric);
    }
}
