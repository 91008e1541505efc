//! One Arrow column builder per logical type, for the readers that decode rows value by value
//! (MySQL's and SQLite's).
//!
//! [`ColumnBuilder::new`] picks the Arrow builder a logical type is read into (the mapping
//! of `lockstep_protocol::arrow_types`); the connector matches on the variant to append a
//! value it decoded its own way, and [`ColumnBuilder::append_null`] and
//! [`ColumnBuilder::finish`] are the same for every connector. PostgreSQL's binary COPY
//! decoder keeps builders of its own, keyed by wire format rather than logical type.
//!
//! Invariant: the arrays built have exactly the Arrow type that `arrow_types` maps the
//! logical type to (timestamps in microseconds, UTC for `timestamptz`; decimals with the
//! field's precision and scale), so batches match the schema the reader declares.

use std::sync::Arc;

use lockstep_plugin_sdk::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int32Builder, Int64Builder, StringBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder,
};
use lockstep_plugin_sdk::arrow::error::ArrowError;
use lockstep_plugin_sdk::DataType;

/// Builds one Arrow column of a logical type.
pub enum ColumnBuilder {
    /// `boolean`.
    Boolean(BooleanBuilder),
    /// `int32`.
    Int32(Int32Builder),
    /// `int64`.
    Int64(Int64Builder),
    /// `float32`.
    Float32(Float32Builder),
    /// `float64`.
    Float64(Float64Builder),
    /// `decimal`, with its precision and scale.
    Decimal(Decimal128Builder, u8, i8),
    /// `text`.
    Text(StringBuilder),
    /// `uuid`, as text.
    Uuid(StringBuilder),
    /// `json`, as text.
    Json(StringBuilder),
    /// `binary`.
    Binary(BinaryBuilder),
    /// `date`: days since 1970-01-01.
    Date(Date32Builder),
    /// `time`: microseconds since midnight.
    Time(Time64MicrosecondBuilder),
    /// `timestamp` and `timestamptz` (whose arrays carry the time zone UTC): microseconds
    /// since the Unix epoch.
    Timestamp(TimestampMicrosecondBuilder),
}

impl ColumnBuilder {
    /// A builder for `capacity` values of `data_type`.
    pub fn new(data_type: DataType, capacity: usize) -> Result<Self, ArrowError> {
        Ok(match data_type {
            DataType::Boolean => Self::Boolean(BooleanBuilder::with_capacity(capacity)),
            DataType::Int32 => Self::Int32(Int32Builder::with_capacity(capacity)),
            DataType::Int64 => Self::Int64(Int64Builder::with_capacity(capacity)),
            DataType::Float32 => Self::Float32(Float32Builder::with_capacity(capacity)),
            DataType::Float64 => Self::Float64(Float64Builder::with_capacity(capacity)),
            DataType::Decimal { precision, scale } => Self::Decimal(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(precision, scale)?,
                precision,
                scale,
            ),
            DataType::Text => Self::Text(StringBuilder::with_capacity(capacity, capacity * 16)),
            DataType::Uuid => Self::Uuid(StringBuilder::with_capacity(capacity, capacity * 36)),
            DataType::Json => Self::Json(StringBuilder::with_capacity(capacity, capacity * 32)),
            DataType::Binary => Self::Binary(BinaryBuilder::with_capacity(capacity, capacity * 16)),
            DataType::Date => Self::Date(Date32Builder::with_capacity(capacity)),
            DataType::Time => Self::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            DataType::Timestamp => {
                Self::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
            DataType::TimestampTz => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            ),
        })
    }

    /// Appends a null.
    pub fn append_null(&mut self) {
        match self {
            Self::Boolean(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Decimal(b, ..) => b.append_null(),
            Self::Text(b) | Self::Uuid(b) | Self::Json(b) => b.append_null(),
            Self::Binary(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Time(b) => b.append_null(),
            Self::Timestamp(b) => b.append_null(),
        }
    }

    /// The column built.
    pub fn finish(self) -> ArrayRef {
        match self {
            Self::Boolean(mut b) => Arc::new(b.finish()),
            Self::Int32(mut b) => Arc::new(b.finish()),
            Self::Int64(mut b) => Arc::new(b.finish()),
            Self::Float32(mut b) => Arc::new(b.finish()),
            Self::Float64(mut b) => Arc::new(b.finish()),
            Self::Decimal(mut b, ..) => Arc::new(b.finish()),
            Self::Text(mut b) | Self::Uuid(mut b) | Self::Json(mut b) => Arc::new(b.finish()),
            Self::Binary(mut b) => Arc::new(b.finish()),
            Self::Date(mut b) => Arc::new(b.finish()),
            Self::Time(mut b) => Arc::new(b.finish()),
            Self::Timestamp(mut b) => Arc::new(b.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_plugin_sdk::protocol::arrow_types::arrow_schema;
    use lockstep_plugin_sdk::FieldInfo;

    #[test]
    fn columns_have_the_arrow_type_of_their_logical_type() {
        let types = [
            DataType::Boolean,
            DataType::Int32,
            DataType::Int64,
            DataType::Float32,
            DataType::Float64,
            DataType::Decimal {
                precision: 12,
                scale: 2,
            },
            DataType::Text,
            DataType::Uuid,
            DataType::Json,
            DataType::Binary,
            DataType::Date,
            DataType::Time,
            DataType::Timestamp,
            DataType::TimestampTz,
        ];
        for data_type in types {
            let field = FieldInfo {
                name: "c".into(),
                data_type,
                nullable: true,
                native_type: None,
            };
            let expected = arrow_schema(&[field]).field(0).data_type().clone();
            let mut builder = ColumnBuilder::new(data_type, 2).unwrap();
            builder.append_null();
            let column = builder.finish();
            assert_eq!(column.data_type(), &expected, "{data_type:?}");
            assert_eq!((column.len(), column.null_count()), (1, 1));
        }
    }
}
