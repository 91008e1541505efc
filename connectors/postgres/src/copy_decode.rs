//! Decoding `COPY ... TO STDOUT (FORMAT binary)` straight into Arrow builders.
//!
//! The stream is an 11-byte signature, flags and a header extension, then one tuple per row
//! (`i16` field count, then per field an `i32` length, -1 for NULL, and the bytes), then an
//! `i16` -1 trailer. Chunks may split a row anywhere: complete rows are decoded in place from
//! the chunk and only the incomplete tail is copied aside. A row is appended to the builders
//! only once all of its bytes are there, so builders never hold half a row. Per value there is
//! one match on the column's wire type and no allocation (text is validated and appended).

use std::sync::Arc;

use lockstep_plugin_sdk::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int32Builder, Int64Builder, StringBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder,
};

use crate::catalog::Wire;
use crate::numeric::Numeric;
use crate::types::{date_from_pg, format_uuid, timestamp_from_pg};

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

enum Builder {
    Bool(BooleanBuilder),
    Int2(Int32Builder),
    Int4(Int32Builder),
    Int8(Int64Builder),
    Oid(Int64Builder),
    Float4(Float32Builder),
    Float8(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    NumericText(StringBuilder),
    Text(StringBuilder),
    Jsonb(StringBuilder),
    Bytea(BinaryBuilder),
    Uuid(StringBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    TimestampTz(TimestampMicrosecondBuilder),
}

impl Builder {
    fn new(wire: Wire, rows: usize, bytes: usize) -> Self {
        match wire {
            Wire::Bool => Builder::Bool(BooleanBuilder::with_capacity(rows)),
            Wire::Int2 => Builder::Int2(Int32Builder::with_capacity(rows)),
            Wire::Int4 => Builder::Int4(Int32Builder::with_capacity(rows)),
            Wire::Int8 => Builder::Int8(Int64Builder::with_capacity(rows)),
            Wire::Oid => Builder::Oid(Int64Builder::with_capacity(rows)),
            Wire::Float4 => Builder::Float4(Float32Builder::with_capacity(rows)),
            Wire::Float8 => Builder::Float8(Float64Builder::with_capacity(rows)),
            Wire::Decimal { precision, scale } => Builder::Decimal(
                Decimal128Builder::with_capacity(rows)
                    .with_precision_and_scale(precision, scale)
                    .expect("the catalog only maps precisions 1..=38 with 0 <= scale <= precision"),
                precision,
                scale,
            ),
            Wire::NumericText => Builder::NumericText(StringBuilder::with_capacity(rows, bytes)),
            Wire::Text => Builder::Text(StringBuilder::with_capacity(rows, bytes)),
            Wire::Jsonb => Builder::Jsonb(StringBuilder::with_capacity(rows, bytes)),
            Wire::Bytea => Builder::Bytea(BinaryBuilder::with_capacity(rows, bytes)),
            Wire::Uuid => Builder::Uuid(StringBuilder::with_capacity(rows, rows * 36)),
            Wire::Date => Builder::Date(Date32Builder::with_capacity(rows)),
            Wire::Time => Builder::Time(Time64MicrosecondBuilder::with_capacity(rows)),
            Wire::Timestamp => Builder::Timestamp(TimestampMicrosecondBuilder::with_capacity(rows)),
            Wire::TimestampTz => Builder::TimestampTz(
                TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            ),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Bool(b) => b.append_null(),
            Builder::Int2(b) | Builder::Int4(b) => b.append_null(),
            Builder::Int8(b) | Builder::Oid(b) => b.append_null(),
            Builder::Float4(b) => b.append_null(),
            Builder::Float8(b) => b.append_null(),
            Builder::Decimal(b, ..) => b.append_null(),
            Builder::NumericText(b) | Builder::Text(b) | Builder::Jsonb(b) | Builder::Uuid(b) => {
                b.append_null()
            }
            Builder::Bytea(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Time(b) => b.append_null(),
            Builder::Timestamp(b) | Builder::TimestampTz(b) => b.append_null(),
        }
    }

    fn append(&mut self, v: &[u8], scratch: &mut String) -> Result<(), String> {
        match self {
            Builder::Bool(b) => b.append_value(fixed::<1>(v)?[0] != 0),
            Builder::Int2(b) => b.append_value(i16::from_be_bytes(fixed(v)?) as i32),
            Builder::Int4(b) => b.append_value(i32::from_be_bytes(fixed(v)?)),
            Builder::Int8(b) => b.append_value(i64::from_be_bytes(fixed(v)?)),
            Builder::Oid(b) => b.append_value(u32::from_be_bytes(fixed(v)?) as i64),
            Builder::Float4(b) => b.append_value(f32::from_be_bytes(fixed(v)?)),
            Builder::Float8(b) => b.append_value(f64::from_be_bytes(fixed(v)?)),
            Builder::Decimal(b, precision, scale) => {
                let n = Numeric::parse(v)?;
                b.append_value(n.to_unscaled(*precision, *scale)?)
            }
            Builder::NumericText(b) => {
                scratch.clear();
                Numeric::parse(v)?.write_text(scratch);
                b.append_value(scratch.as_str())
            }
            Builder::Text(b) => b.append_value(utf8(v)?),
            Builder::Jsonb(b) => match v.split_first() {
                Some((1, text)) => b.append_value(utf8(text)?),
                _ => return Err("a jsonb value of an unknown binary version".into()),
            },
            Builder::Bytea(b) => b.append_value(v),
            Builder::Uuid(b) => {
                let mut out = [0u8; 36];
                format_uuid(&fixed(v)?, &mut out);
                b.append_value(std::str::from_utf8(&out).map_err(|e| e.to_string())?)
            }
            Builder::Date(b) => b.append_value(date_from_pg(i32::from_be_bytes(fixed(v)?))?),
            Builder::Time(b) => b.append_value(i64::from_be_bytes(fixed(v)?)),
            Builder::Timestamp(b) | Builder::TimestampTz(b) => {
                b.append_value(timestamp_from_pg(i64::from_be_bytes(fixed(v)?))?)
            }
        }
        Ok(())
    }

    /// The bytes of values held so far, for the variable-width columns; 0 for the others.
    fn value_bytes(&self) -> usize {
        match self {
            Builder::NumericText(b) | Builder::Text(b) | Builder::Jsonb(b) | Builder::Uuid(b) => {
                b.values_slice().len()
            }
            Builder::Bytea(b) => b.values_slice().len(),
            _ => 0,
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Int2(b) | Builder::Int4(b) => Arc::new(b.finish()),
            Builder::Int8(b) | Builder::Oid(b) => Arc::new(b.finish()),
            Builder::Float4(b) => Arc::new(b.finish()),
            Builder::Float8(b) => Arc::new(b.finish()),
            Builder::Decimal(b, ..) => Arc::new(b.finish()),
            Builder::NumericText(b) | Builder::Text(b) | Builder::Jsonb(b) | Builder::Uuid(b) => {
                Arc::new(b.finish())
            }
            Builder::Bytea(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Time(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) | Builder::TimestampTz(b) => Arc::new(b.finish()),
        }
    }
}

fn fixed<const N: usize>(v: &[u8]) -> Result<[u8; N], String> {
    v.try_into()
        .map_err(|_| format!("a {}-byte value where {N} bytes were expected", v.len()))
}

fn utf8(v: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(v).map_err(|e| format!("text that is not UTF-8: {e}"))
}

#[derive(PartialEq)]
enum State {
    Header,
    Rows,
    Done,
}

/// A decoder for one binary COPY stream.
pub struct CopyDecoder {
    builders: Vec<Builder>,
    names: Vec<String>,
    state: State,
    pending: Vec<u8>,
    rows: usize,
    scratch: String,
}

/// A value the decoder could not take, with where it was.
#[derive(Debug)]
pub struct DecodeError {
    /// The 0-based row of the COPY stream, when the error is in a row.
    pub row: Option<usize>,
    /// The column's name, when the error is in a value.
    pub field: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.row, &self.field) {
            (Some(r), Some(c)) => write!(f, "row {r} of the batch, column `{c}`: {}", self.reason),
            (Some(r), None) => write!(f, "row {r} of the batch: {}", self.reason),
            _ => write!(f, "{}", self.reason),
        }
    }
}

impl CopyDecoder {
    /// A decoder for columns of the given names and wire types. `rows` and `text_bytes` are
    /// capacity hints.
    pub fn new(columns: &[(String, Wire)], rows: usize, text_bytes: usize) -> Self {
        Self::with_value_bytes(columns, rows, text_bytes, &[])
    }

    /// A decoder whose variable-width columns start with room for `value_bytes[i]` bytes of
    /// values each (say, what the previous batch of the same read held, from
    /// [`Self::value_bytes`]); columns without a hint start with `text_bytes`. A buffer sized
    /// from the start is neither copied as it grows nor left up to twice too large, and a
    /// finished batch keeps its buffers' whole capacity for as long as it lives.
    pub fn with_value_bytes(
        columns: &[(String, Wire)],
        rows: usize,
        text_bytes: usize,
        value_bytes: &[usize],
    ) -> Self {
        CopyDecoder {
            builders: columns
                .iter()
                .enumerate()
                .map(|(i, (_, w))| {
                    let hint = value_bytes.get(i).copied().filter(|b| *b > 0);
                    Builder::new(*w, rows, hint.unwrap_or(text_bytes))
                })
                .collect(),
            names: columns.iter().map(|(n, _)| n.clone()).collect(),
            state: State::Header,
            pending: Vec::new(),
            rows: 0,
            scratch: String::new(),
        }
    }

    /// The bytes of values decoded so far in each column (0 for fixed-width columns).
    pub fn value_bytes(&self) -> Vec<usize> {
        self.builders.iter().map(Builder::value_bytes).collect()
    }

    /// Rows decoded so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Takes the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), DecodeError> {
        if self.pending.is_empty() {
            let used = self.parse(chunk)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            self.pending.extend_from_slice(chunk);
            let pending = std::mem::take(&mut self.pending);
            let used = self.parse(&pending);
            let used = match used {
                Ok(u) => u,
                Err(e) => {
                    self.pending = pending;
                    return Err(e);
                }
            };
            self.pending = pending;
            self.pending.drain(..used);
        }
        Ok(())
    }

    /// The columns, once the whole stream was fed.
    pub fn finish(mut self) -> Result<Vec<ArrayRef>, DecodeError> {
        if self.state != State::Done || !self.pending.is_empty() {
            return Err(self.stream_error("the COPY stream ended before its trailer"));
        }
        Ok(self.builders.iter_mut().map(Builder::finish).collect())
    }

    fn stream_error(&self, reason: &str) -> DecodeError {
        DecodeError {
            row: None,
            field: None,
            reason: format!("malformed binary COPY data: {reason}"),
        }
    }

    /// Decodes every complete row of `buf`; returns how many bytes it used.
    fn parse(&mut self, buf: &[u8]) -> Result<usize, DecodeError> {
        let mut pos = 0;
        if self.state == State::Header {
            if buf.len() < 19 {
                return Ok(0);
            }
            if &buf[..11] != SIGNATURE {
                return Err(self.stream_error("no PGCOPY signature"));
            }
            let ext = u32::from_be_bytes([buf[15], buf[16], buf[17], buf[18]]) as usize;
            if buf.len() < 19 + ext {
                return Ok(0);
            }
            pos = 19 + ext;
            self.state = State::Rows;
        }
        let ncols = self.builders.len();
        while self.state == State::Rows {
            let Some(count) = buf.get(pos..pos + 2) else {
                break;
            };
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                self.state = State::Done;
                pos += 2;
                break;
            }
            if count as usize != ncols {
                return Err(self.stream_error("a row with an unexpected number of fields"));
            }
            // Find the end of the row first, so that a row is decoded only when complete.
            let mut end = pos + 2;
            let mut complete = true;
            for _ in 0..ncols {
                let Some(len) = buf.get(end..end + 4) else {
                    complete = false;
                    break;
                };
                let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                end += 4 + len.max(0) as usize;
                if end > buf.len() {
                    complete = false;
                    break;
                }
            }
            if !complete {
                break;
            }
            let mut p = pos + 2;
            for (i, builder) in self.builders.iter_mut().enumerate() {
                let len = i32::from_be_bytes([buf[p], buf[p + 1], buf[p + 2], buf[p + 3]]);
                p += 4;
                if len < 0 {
                    builder.append_null();
                } else {
                    let v = &buf[p..p + len as usize];
                    p += len as usize;
                    builder
                        .append(v, &mut self.scratch)
                        .map_err(|reason| DecodeError {
                            row: Some(self.rows),
                            field: Some(self.names[i].clone()),
                            reason,
                        })?;
                }
            }
            self.rows += 1;
            pos = end;
        }
        if self.state == State::Done && pos < buf.len() {
            return Err(self.stream_error("data after the trailer"));
        }
        Ok(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_plugin_sdk::arrow::array::{Array, AsArray};
    use lockstep_plugin_sdk::arrow::datatypes::Int64Type;

    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(SIGNATURE);
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&0u32.to_be_bytes());
        for (id, name) in [(1i64, Some("Zoë")), (2, None), (i64::MIN, Some(""))] {
            s.extend_from_slice(&2i16.to_be_bytes());
            s.extend_from_slice(&8i32.to_be_bytes());
            s.extend_from_slice(&id.to_be_bytes());
            match name {
                Some(n) => {
                    s.extend_from_slice(&(n.len() as i32).to_be_bytes());
                    s.extend_from_slice(n.as_bytes());
                }
                None => s.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        s.extend_from_slice(&(-1i16).to_be_bytes());
        s
    }

    fn columns() -> Vec<(String, Wire)> {
        vec![("id".into(), Wire::Int8), ("name".into(), Wire::Text)]
    }

    #[test]
    fn rows_split_across_chunks_anywhere_decode_the_same() {
        let data = stream();
        for chunk in [1, 2, 3, 7, 19, 1000] {
            let mut d = CopyDecoder::new(&columns(), 4, 16);
            for c in data.chunks(chunk) {
                d.feed(c).unwrap();
            }
            assert_eq!(d.rows(), 3);
            let cols = d.finish().unwrap();
            assert_eq!(cols[0].as_primitive::<Int64Type>().value(2), i64::MIN);
            assert_eq!(cols[1].as_string::<i32>().value(0), "Zoë");
            assert!(cols[1].is_null(1));
            assert_eq!(cols[1].as_string::<i32>().value(2), "");
        }
    }

    #[test]
    fn value_bytes_are_counted_and_hints_from_them_decode_the_same() {
        let data = stream();
        let mut first = CopyDecoder::new(&columns(), 4, 16);
        first.feed(&data).unwrap();
        // "Zoë" is four bytes, the null and the empty text none; the integer column has none.
        assert_eq!(first.value_bytes(), vec![0, 4]);
        let plain = first.finish().unwrap();
        // Hints too small, exact and too large all give the same columns.
        for hint in [1, 4, 1 << 20] {
            let mut hinted = CopyDecoder::with_value_bytes(&columns(), 4, 16, &[0, hint]);
            hinted.feed(&data).unwrap();
            assert_eq!(hinted.value_bytes(), vec![0, 4]);
            let cols = hinted.finish().unwrap();
            assert_eq!(cols.len(), plain.len());
            for (a, b) in cols.iter().zip(&plain) {
                assert_eq!(a.to_data(), b.to_data());
            }
        }
    }

    #[test]
    fn truncated_or_malformed_streams_are_errors() {
        let data = stream();
        let mut d = CopyDecoder::new(&columns(), 4, 16);
        d.feed(&data[..data.len() - 5]).unwrap();
        assert!(d.finish().is_err());
        let mut d = CopyDecoder::new(&columns()[..1], 4, 16);
        assert!(d.feed(&data).is_err());
    }
}
