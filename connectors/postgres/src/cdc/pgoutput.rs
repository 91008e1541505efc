//! A parser of the messages of PostgreSQL's built-in logical decoding output plugin,
//! `pgoutput`, protocol version 1 (the "Logical Replication Message Formats" chapter of the
//! PostgreSQL documentation): Begin, Commit, Origin, Relation, Type, Insert, Update, Delete,
//! Truncate and Message.
//!
//! Invariants:
//! - Parsing never panics and never reads past a message: a short, unknown or malformed
//!   message is a [`PgOutputError`] naming the message and what was wrong.
//! - Values stay as the server sent them (text in the column type's output format); turning
//!   them into typed values is the caller's business.

use thiserror::Error;

/// A malformed or unexpected pgoutput message.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PgOutputError {
    /// The message ended before a field it must have.
    #[error("pgoutput {message} message is truncated: {what} is missing")]
    Truncated {
        message: &'static str,
        what: &'static str,
    },
    /// A message type byte this parser does not know.
    #[error("pgoutput message of unknown type {0:?}")]
    UnknownMessage(char),
    /// A byte that must be one of a few values is not.
    #[error("pgoutput {message} message has {what} {found:?}, expected one of {expected}")]
    Unexpected {
        message: &'static str,
        what: &'static str,
        found: char,
        expected: &'static str,
    },
    /// An empty message.
    #[error("empty pgoutput message")]
    Empty,
    /// Bytes left over after the message's last field.
    #[error("pgoutput {message} message has {extra} bytes after its last field")]
    Trailing { message: &'static str, extra: usize },
    /// A name or a value that is not UTF-8.
    #[error("pgoutput {message} message has {what} that is not UTF-8")]
    NotUtf8 {
        message: &'static str,
        what: &'static str,
    },
}

/// One column value of a tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TupleValue {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value that the update did not send (`u`).
    UnchangedToast,
    /// A value in the type's text output format.
    Text(String),
    /// A value in the type's binary format (only with the `binary` option, not used here).
    Binary(Vec<u8>),
}

/// A column of a Relation message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity (the key).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub typmod: i32,
}

/// A Relation message: the shape of a table as the following changes use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: char,
    pub columns: Vec<RelationColumn>,
}

/// The old tuple an update or delete carries: only the key columns (`K`) or, with
/// `REPLICA IDENTITY FULL`, every column (`O`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldTuple {
    Key(Vec<TupleValue>),
    Full(Vec<TupleValue>),
}

impl OldTuple {
    /// The values, whichever kind.
    pub fn values(&self) -> &[TupleValue] {
        match self {
            OldTuple::Key(v) | OldTuple::Full(v) => v,
        }
    }
}

/// One decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Begin {
        /// The LSN of the transaction's commit record.
        final_lsn: u64,
        timestamp: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: u64,
        /// The LSN just past the commit record: where a consumer confirms to.
        end_lsn: u64,
        timestamp: i64,
    },
    Origin {
        lsn: u64,
        name: String,
    },
    Relation(Relation),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Vec<TupleValue>,
    },
    Update {
        relation: u32,
        old: Option<OldTuple>,
        new: Vec<TupleValue>,
    },
    Delete {
        relation: u32,
        old: OldTuple,
    },
    Truncate {
        options: u8,
        relations: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        flags: u8,
        lsn: u64,
        prefix: String,
        content: Vec<u8>,
    },
}

/// A cursor over one message's bytes.
struct Bytes<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PgOutputError> {
        if self.buf.len() < n {
            return Err(PgOutputError::Truncated {
                message: self.message,
                what,
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], PgOutputError> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, PgOutputError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, PgOutputError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, PgOutputError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, PgOutputError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, PgOutputError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, PgOutputError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// A NUL-terminated string.
    fn cstr(&mut self, what: &'static str) -> Result<String, PgOutputError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(PgOutputError::Truncated {
                message: self.message,
                what,
            })?;
        let text = std::str::from_utf8(&self.buf[..end]).map_err(|_| PgOutputError::NotUtf8 {
            message: self.message,
            what,
        })?;
        self.buf = &self.buf[end + 1..];
        Ok(text.to_owned())
    }

    fn tuple(&mut self) -> Result<Vec<TupleValue>, PgOutputError> {
        let count = self.i16("the tuple's column count")?;
        let count = usize::try_from(count).map_err(|_| PgOutputError::Truncated {
            message: self.message,
            what: "a non-negative column count",
        })?;
        let mut values = Vec::with_capacity(count.min(1600));
        for _ in 0..count {
            let kind = self.u8("a column's kind")?;
            values.push(match kind {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' | b'b' => {
                    let len = self.i32("a value's length")?;
                    let len = usize::try_from(len).map_err(|_| PgOutputError::Truncated {
                        message: self.message,
                        what: "a non-negative value length",
                    })?;
                    let bytes = self.take(len, "a value's bytes")?;
                    if kind == b't' {
                        TupleValue::Text(String::from_utf8(bytes.to_vec()).map_err(|_| {
                            PgOutputError::NotUtf8 {
                                message: self.message,
                                what: "a text value",
                            }
                        })?)
                    } else {
                        TupleValue::Binary(bytes.to_vec())
                    }
                }
                other => {
                    return Err(PgOutputError::Unexpected {
                        message: self.message,
                        what: "column kind",
                        found: other as char,
                        expected: "n, u, t, b",
                    })
                }
            });
        }
        Ok(values)
    }

    fn old_tuple(&mut self, kind: u8) -> Result<OldTuple, PgOutputError> {
        match kind {
            b'K' => Ok(OldTuple::Key(self.tuple()?)),
            b'O' => Ok(OldTuple::Full(self.tuple()?)),
            other => Err(PgOutputError::Unexpected {
                message: self.message,
                what: "old tuple kind",
                found: other as char,
                expected: "K, O",
            }),
        }
    }

    fn expect_new(&mut self, kind: u8) -> Result<Vec<TupleValue>, PgOutputError> {
        if kind != b'N' {
            return Err(PgOutputError::Unexpected {
                message: self.message,
                what: "tuple kind",
                found: kind as char,
                expected: "N",
            });
        }
        self.tuple()
    }

    fn end(self) -> Result<(), PgOutputError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(PgOutputError::Trailing {
                message: self.message,
                extra: self.buf.len(),
            })
        }
    }
}

/// Parses one message.
pub fn parse(data: &[u8]) -> Result<Message, PgOutputError> {
    let (&tag, rest) = data.split_first().ok_or(PgOutputError::Empty)?;
    let name = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        other => return Err(PgOutputError::UnknownMessage(other as char)),
    };
    let mut b = Bytes {
        buf: rest,
        message: name,
    };
    let message = match tag {
        b'B' => Message::Begin {
            final_lsn: b.u64("the final LSN")?,
            timestamp: b.i64("the commit timestamp")?,
            xid: b.u32("the transaction id")?,
        },
        b'C' => Message::Commit {
            flags: b.u8("the flags")?,
            commit_lsn: b.u64("the commit LSN")?,
            end_lsn: b.u64("the end LSN")?,
            timestamp: b.i64("the commit timestamp")?,
        },
        b'O' => Message::Origin {
            lsn: b.u64("the origin LSN")?,
            name: b.cstr("the origin name")?,
        },
        b'R' => {
            let oid = b.u32("the relation OID")?;
            let namespace = b.cstr("the namespace")?;
            let name = b.cstr("the relation name")?;
            let replica_identity = b.u8("the replica identity")? as char;
            let count = b.i16("the column count")?;
            let mut columns = Vec::new();
            for _ in 0..count.max(0) {
                let flags = b.u8("a column's flags")?;
                columns.push(RelationColumn {
                    key: flags & 1 == 1,
                    name: b.cstr("a column name")?,
                    type_oid: b.u32("a column's type OID")?,
                    typmod: b.i32("a column's type modifier")?,
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: b.u32("the type OID")?,
            namespace: b.cstr("the namespace")?,
            name: b.cstr("the type name")?,
        },
        b'I' => {
            let relation = b.u32("the relation OID")?;
            let kind = b.u8("the tuple kind")?;
            Message::Insert {
                relation,
                new: b.expect_new(kind)?,
            }
        }
        b'U' => {
            let relation = b.u32("the relation OID")?;
            let mut kind = b.u8("the tuple kind")?;
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                old = Some(b.old_tuple(kind)?);
                kind = b.u8("the new tuple's kind")?;
            }
            Message::Update {
                relation,
                old,
                new: b.expect_new(kind)?,
            }
        }
        b'D' => {
            let relation = b.u32("the relation OID")?;
            let kind = b.u8("the tuple kind")?;
            Message::Delete {
                relation,
                old: b.old_tuple(kind)?,
            }
        }
        b'T' => {
            let count = b.i32("the relation count")?;
            let options = b.u8("the options")?;
            let mut relations = Vec::new();
            for _ in 0..count.max(0) {
                relations.push(b.u32("a relation OID")?);
            }
            Message::Truncate { options, relations }
        }
        _ => {
            let flags = b.u8("the flags")?;
            let lsn = b.u64("the LSN")?;
            let prefix = b.cstr("the prefix")?;
            let len = b.i32("the content length")?;
            let len = usize::try_from(len).map_err(|_| PgOutputError::Truncated {
                message: "Message",
                what: "a non-negative content length",
            })?;
            let content = b.take(len, "the content")?.to_vec();
            Message::Message {
                flags,
                lsn,
                prefix,
                content,
            }
        }
    };
    b.end()?;
    Ok(message)
}

/// Parses an LSN's text form (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.trim().split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    (high <= u32::MAX as u64 && low <= u32::MAX as u64).then_some((high << 32) | low)
}

/// A pgoutput timestamp (microseconds since 2000-01-01 UTC) as RFC 3339 text.
pub fn format_timestamp(micros_since_2000: i64) -> String {
    /// 2000-01-01 in microseconds since the Unix epoch.
    const EPOCH_2000_MICROS: i64 = 946_684_800_000_000;
    chrono::DateTime::from_timestamp_micros(micros_since_2000.saturating_add(EPOCH_2000_MICROS))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An LSN's text form.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut out = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => out.push(b'n'),
                Some("\u{0}u") => out.push(b'u'),
                Some(text) => {
                    out.push(b't');
                    out.extend((text.len() as i32).to_be_bytes());
                    out.extend(text.as_bytes());
                }
            }
        }
        out
    }

    #[test]
    fn messages_parse() {
        let mut begin = vec![b'B'];
        begin.extend(0x1_0000_0010u64.to_be_bytes());
        begin.extend(7i64.to_be_bytes());
        begin.extend(42u32.to_be_bytes());
        assert_eq!(
            parse(&begin).unwrap(),
            Message::Begin {
                final_lsn: 0x1_0000_0010,
                timestamp: 7,
                xid: 42
            }
        );

        let mut relation = vec![b'R'];
        relation.extend(16384u32.to_be_bytes());
        relation.extend(b"public\0people\0d");
        relation.extend(2i16.to_be_bytes());
        relation.push(1);
        relation.extend(b"id\0");
        relation.extend(20u32.to_be_bytes());
        relation.extend((-1i32).to_be_bytes());
        relation.push(0);
        relation.extend(b"bio\0");
        relation.extend(25u32.to_be_bytes());
        relation.extend((-1i32).to_be_bytes());
        let Message::Relation(r) = parse(&relation).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!((r.name.as_str(), r.replica_identity), ("people", 'd'));
        assert!(r.columns[0].key && !r.columns[1].key);

        let mut update = vec![b'U'];
        update.extend(16384u32.to_be_bytes());
        update.push(b'K');
        update.extend(tuple(&[Some("1"), None]));
        update.push(b'N');
        update.extend(tuple(&[Some("2"), Some("\u{0}u")]));
        assert_eq!(
            parse(&update).unwrap(),
            Message::Update {
                relation: 16384,
                old: Some(OldTuple::Key(vec![
                    TupleValue::Text("1".into()),
                    TupleValue::Null
                ])),
                new: vec![TupleValue::Text("2".into()), TupleValue::UnchangedToast],
            }
        );

        let mut truncate = vec![b'T'];
        truncate.extend(1i32.to_be_bytes());
        truncate.push(0);
        truncate.extend(16384u32.to_be_bytes());
        assert_eq!(
            parse(&truncate).unwrap(),
            Message::Truncate {
                options: 0,
                relations: vec![16384]
            }
        );
    }

    #[test]
    fn malformed_messages_are_errors_that_say_what() {
        assert_eq!(parse(b""), Err(PgOutputError::Empty));
        assert_eq!(parse(b"Z"), Err(PgOutputError::UnknownMessage('Z')));
        let e = parse(b"B\0\0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pgoutput Begin message is truncated: the final LSN is missing"
        );
        let mut insert = vec![b'I'];
        insert.extend(1u32.to_be_bytes());
        insert.push(b'X');
        assert!(parse(&insert)
            .unwrap_err()
            .to_string()
            .contains("tuple kind 'X'"));
        let mut long = vec![b'I'];
        long.extend(1u32.to_be_bytes());
        long.push(b'N');
        long.extend(tuple(&[Some("1")]));
        long.push(0);
        assert_eq!(
            parse(&long),
            Err(PgOutputError::Trailing {
                message: "Insert",
                extra: 1
            })
        );
        // A value longer than the message.
        let mut short = vec![b'I'];
        short.extend(1u32.to_be_bytes());
        short.push(b'N');
        short.extend(1i16.to_be_bytes());
        short.push(b't');
        short.extend(100i32.to_be_bytes());
        short.extend(b"abc");
        assert!(matches!(
            parse(&short),
            Err(PgOutputError::Truncated { .. })
        ));
    }

    #[test]
    fn lsns_round_trip() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nope"), None);
    }
}
