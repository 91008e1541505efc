//! Checkpoints of cursor-based reads: reading one back, and writing one after a batch.
//!
//! A read ordered by (cursor, key) — or by the key alone in full mode — checkpoints the
//! last row it delivered as a [`CursorCheckpoint`]: `{"cursor": c, "key": [k1, k2]}`, or
//! `{"key": [k1, k2]}` for a full read. [`resume_point`] turns a stored checkpoint back into
//! the order values a read resumes strictly after; [`checkpoint_after`] builds one from the
//! order values of a batch's last row.
//!
//! A source whose reads place every row, those without a cursor value included (SQLite
//! sorts NULL cursors first and reads them), describes its order as a [`RowOrder`] instead:
//! a `null` cursor is then a position, not "from the start", each order column has an
//! [`OrderRole`] (cursor, key field, or tie-breaker: a column that makes the order total
//! when the key is not unique), and its checkpoints are `{"cursor": c, "key": [k1, k2],
//! "tiebreak": [t1]}` with the whole key, even a key field that is also the cursor.
//!
//! Invariants:
//! - A missing or `null` checkpoint, an incremental checkpoint whose cursor is `null`, and a
//!   full checkpoint without key values all mean "from the start" ([`resume_point`]; for a
//!   [`RowOrder`], only a missing or `null` checkpoint, or one without order values, does).
//! - A checkpoint may carry a cursor without key values (a prefix of the order); it never
//!   carries a different number of key values than the read's key has fields (more than it
//!   has, for a [`RowOrder`], which resumes *at* a prefix): that is a `config` error naming
//!   the stream, the checkpoint and how to recover ([`unusable_checkpoint`]), as is a
//!   [`RowOrder`] checkpoint of the other mode.
//! - Values keep their JSON form; converting them to the system's types is the connector's.

use serde_json::{json, Map, Value};

use crate::{ConnectorError, CursorCheckpoint, ReadMode, ReadRequest, Result};

/// Where a read resumes: strictly after these order values.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumePoint {
    /// The cursor value (incremental reads only).
    pub cursor: Option<Value>,
    /// The key values, in key order; empty when the checkpoint holds only a cursor.
    pub key: Vec<Value>,
}

impl ResumePoint {
    /// The order values: the cursor (when there is one), then the key values. They may be
    /// fewer than the order columns (a cursor without a key): a prefix of the order.
    pub fn order_values(self) -> Vec<Value> {
        let mut values: Vec<Value> = self.cursor.into_iter().collect();
        values.extend(self.key);
        values
    }
}

/// Reads back the checkpoint of `request`, a read ordered by `order_len` columns (the
/// cursor, when the read is incremental, then the key fields not already ordered).
/// `None` means "read from the start".
pub fn resume_point(request: &ReadRequest, order_len: usize) -> Result<Option<ResumePoint>> {
    let key_len = order_len.saturating_sub((request.mode == ReadMode::Incremental) as usize);
    resume(
        &request.stream,
        request.checkpoint.as_ref(),
        request.mode,
        key_len,
    )
}

/// [`resume_point`] with the request's parts apart; `key_len` counts the key values a
/// checkpoint holds.
fn resume(
    stream: &str,
    checkpoint: Option<&Value>,
    mode: ReadMode,
    key_len: usize,
) -> Result<Option<ResumePoint>> {
    let Some(checkpoint) = checkpoint.filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    let bad = |why: &str| unusable_checkpoint(stream, checkpoint, why);
    let parsed: CursorCheckpoint = match checkpoint {
        Value::Object(_) => serde_json::from_value(checkpoint.clone()).map_err(|e| {
            bad(&format!(
                "expected {{\"cursor\": ..., \"key\": [...]}} ({e})"
            ))
        })?,
        _ => return Err(bad("it is not a JSON object")),
    };
    if !parsed.key.is_empty() && parsed.key.len() != key_len {
        return Err(bad(&format!(
            "it has {} key values and the key has {key_len} fields",
            parsed.key.len()
        )));
    }
    match mode {
        ReadMode::Cdc => Err(crate::resolve::cdc_unsupported(stream)),
        ReadMode::Incremental if parsed.cursor.is_null() => Ok(None),
        ReadMode::Incremental => Ok(Some(ResumePoint {
            cursor: Some(parsed.cursor),
            key: parsed.key,
        })),
        ReadMode::Full if parsed.key.is_empty() => Ok(None),
        ReadMode::Full => Ok(Some(ResumePoint {
            cursor: None,
            key: parsed.key,
        })),
    }
}

/// The checkpoint after a row whose order values are `order_values` (the cursor first when
/// `incremental`, then the key values).
pub fn checkpoint_after(incremental: bool, mut order_values: Vec<Value>) -> Value {
    if incremental && !order_values.is_empty() {
        let key = order_values.split_off(1);
        let cursor = order_values.pop().unwrap_or(Value::Null);
        json!({ "cursor": cursor, "key": key })
    } else {
        json!({ "key": order_values })
    }
}

/// The error for a checkpoint of a read of `stream` that cannot be resumed, saying `why` and
/// how to recover. Connectors use it too when a value of a checkpoint does not convert.
pub fn unusable_checkpoint(stream: &str, checkpoint: &Value, why: &str) -> ConnectorError {
    ConnectorError::config(format!(
        "reading `{stream}`: the checkpoint {checkpoint} cannot be resumed: {why}; if the \
         sync's key or cursor changed since it was saved, reset the sync's checkpoint to read \
         from the start"
    ))
}

/// What a column of a [`RowOrder`] is to the read's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderRole {
    /// The cursor of an incremental read.
    Cursor,
    /// The key field at this index of the read's key.
    Key(usize),
    /// The tie-breaker at this index: a column that makes the order total where the cursor
    /// and key do not (a primary key the read's key lacks, a row id).
    Tiebreak(usize),
}

/// Where a read of a [`RowOrder`] resumes.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    /// The values of the first `values.len()` order columns; never empty.
    pub values: Vec<Value>,
    /// Whether the read resumes *at* these values (they are a proper prefix of the order)
    /// rather than strictly after them.
    pub inclusive: bool,
}

/// The order of a read that places every row, rows without a cursor value included, and
/// may break ties with columns beyond the key (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowOrder {
    incremental: bool,
    key_len: usize,
    roles: Vec<OrderRole>,
}

impl RowOrder {
    /// The order of a read (`incremental` or full) whose key has `key_len` fields, and whose
    /// order columns play `roles`, in order. A key field that is also the cursor has no role
    /// of its own: the cursor's value stands for it in checkpoints.
    pub fn new(incremental: bool, key_len: usize, roles: Vec<OrderRole>) -> Self {
        Self {
            incremental,
            key_len,
            roles,
        }
    }

    /// The roles of the order columns, in order.
    pub fn roles(&self) -> &[OrderRole] {
        &self.roles
    }

    /// Reads back the checkpoint of `request`: `None` means "read from the start".
    pub fn resume(&self, request: &ReadRequest) -> Result<Option<Resume>> {
        let Some(checkpoint) = request.checkpoint.as_ref().filter(|c| !c.is_null()) else {
            return Ok(None);
        };
        let bad = |why: &str| unusable_checkpoint(&request.stream, checkpoint, why);
        let object = checkpoint
            .as_object()
            .ok_or_else(|| bad("it is not a JSON object"))?;
        let list = |name: &str| match object.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items.clone()),
            Some(other) => Err(bad(&format!("`{name}` is {other}, not a list"))),
        };
        let key = list("key")?;
        let tiebreak = list("tiebreak")?;
        let cursor = object.get("cursor");
        match (self.incremental, cursor) {
            (true, None) => return Err(bad("it has no cursor: it comes from a full read")),
            (false, Some(_)) => {
                return Err(bad("it has a cursor: it comes from an incremental read"))
            }
            _ => {}
        }
        if key.len() > self.key_len {
            return Err(bad(&format!(
                "it has {} key values and the key has {} fields",
                key.len(),
                self.key_len
            )));
        }
        let mut values = Vec::with_capacity(self.roles.len());
        for role in &self.roles {
            let value = match *role {
                OrderRole::Cursor => cursor,
                OrderRole::Key(i) => key.get(i),
                OrderRole::Tiebreak(i) => tiebreak.get(i),
            };
            match value {
                Some(v) => values.push(v.clone()),
                None => break,
            }
        }
        if values.is_empty() {
            return Ok(None);
        }
        let inclusive = values.len() < self.roles.len();
        Ok(Some(Resume { values, inclusive }))
    }

    /// The checkpoint after a row whose order values are `values` (one per role).
    pub fn checkpoint(&self, values: &[Value]) -> Value {
        let mut key = vec![Value::Null; self.key_len];
        let mut tiebreak = Vec::new();
        let mut cursor = Value::Null;
        for (role, value) in self.roles.iter().zip(values) {
            match *role {
                OrderRole::Cursor => cursor = value.clone(),
                OrderRole::Key(i) => key[i] = value.clone(),
                OrderRole::Tiebreak(_) => tiebreak.push(value.clone()),
            }
        }
        // A key field that is also the cursor is ordered once, as the cursor.
        for (i, slot) in key.iter_mut().enumerate() {
            if !self.roles.contains(&OrderRole::Key(i)) {
                *slot = cursor.clone();
            }
        }
        let mut out = Map::new();
        if self.incremental {
            out.insert("cursor".into(), cursor);
        }
        out.insert("key".into(), Value::Array(key));
        if !tiebreak.is_empty() {
            out.insert("tiebreak".into(), Value::Array(tiebreak));
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_null_and_empty_checkpoints_start_from_the_beginning() {
        for mode in [ReadMode::Full, ReadMode::Incremental] {
            assert_eq!(resume("s", None, mode, 1).unwrap(), None);
            assert_eq!(resume("s", Some(&Value::Null), mode, 1).unwrap(), None);
        }
        let cp = json!({"cursor": null, "key": [1]});
        assert_eq!(
            resume("s", Some(&cp), ReadMode::Incremental, 1).unwrap(),
            None
        );
        let cp = json!({"key": []});
        assert_eq!(resume("s", Some(&cp), ReadMode::Full, 1).unwrap(), None);
    }

    #[test]
    fn checkpoints_round_trip_through_their_order_values() {
        let cp = checkpoint_after(true, vec![json!("2024-01-01"), json!(7), json!("a")]);
        assert_eq!(cp, json!({"cursor": "2024-01-01", "key": [7, "a"]}));
        let point = resume("s", Some(&cp), ReadMode::Incremental, 2)
            .unwrap()
            .unwrap();
        assert_eq!(
            point.order_values(),
            [json!("2024-01-01"), json!(7), json!("a")]
        );
        let cp = checkpoint_after(false, vec![json!(7)]);
        assert_eq!(cp, json!({"key": [7]}));
        let point = resume("s", Some(&cp), ReadMode::Full, 1).unwrap().unwrap();
        assert_eq!(point.order_values(), [json!(7)]);
    }

    #[test]
    fn a_cursor_without_key_values_is_a_prefix() {
        let cp = json!({"cursor": 5});
        let point = resume("s", Some(&cp), ReadMode::Incremental, 2)
            .unwrap()
            .unwrap();
        assert_eq!(point.order_values(), [json!(5)]);
    }

    #[test]
    fn checkpoints_that_do_not_fit_the_read_are_config_errors_naming_the_stream() {
        let e = resume("people", Some(&json!({"key": [1, 2]})), ReadMode::Full, 1).unwrap_err();
        assert_eq!(e.kind, crate::api::ErrorKind::CONFIG);
        assert!(e.message.contains("`people`"), "{}", e.message);
        assert!(e.message.contains("2 key values"), "{}", e.message);
        assert!(e.message.contains("reset"), "{}", e.message);
        let e = resume("people", Some(&json!([1])), ReadMode::Full, 1).unwrap_err();
        assert!(e.message.contains("not a JSON object"), "{}", e.message);
        let e = resume("people", Some(&json!({"key": 5})), ReadMode::Full, 1).unwrap_err();
        assert!(e.message.contains("expected"), "{}", e.message);
    }

    fn request(mode: ReadMode, checkpoint: Value) -> ReadRequest {
        ReadRequest {
            stream: "events".into(),
            mode,
            fields: None,
            cursor_field: None,
            key: vec![],
            checkpoint: Some(checkpoint),
            batch_size: None,
            keys: None,
            key_summary: false,
            dry_run: false,
            cdc: None,
            locations: None,
            range_hash: None,
        }
    }

    #[test]
    fn row_orders_round_trip_with_null_cursors_tiebreaks_and_a_key_that_is_the_cursor() {
        use OrderRole::*;
        // Ordered by (at, id, rowid): the key (id) is not unique, the rowid breaks ties.
        let order = RowOrder::new(true, 1, vec![Cursor, Key(0), Tiebreak(0)]);
        let cp = order.checkpoint(&[Value::Null, json!(7), json!(3)]);
        assert_eq!(cp, json!({"cursor": null, "key": [7], "tiebreak": [3]}));
        let back = order
            .resume(&request(ReadMode::Incremental, cp))
            .unwrap()
            .unwrap();
        assert_eq!(back.values, [Value::Null, json!(7), json!(3)]);
        assert!(!back.inclusive);
        // The key (id) is the cursor: ordered once, written in both places.
        let order = RowOrder::new(true, 1, vec![Cursor]);
        let cp = order.checkpoint(&[json!(90)]);
        assert_eq!(cp, json!({"cursor": 90, "key": [90]}));
        let back = order.resume(&request(ReadMode::Incremental, cp)).unwrap();
        assert_eq!(back.unwrap().values, [json!(90)]);
        // A full read writes no cursor.
        let order = RowOrder::new(false, 2, vec![Key(0), Key(1)]);
        assert_eq!(
            order.checkpoint(&[json!("a"), json!(1)]),
            json!({"key": ["a", 1]})
        );
    }

    #[test]
    fn a_row_order_resumes_at_a_prefix_and_refuses_the_other_modes_checkpoints() {
        use OrderRole::*;
        let order = RowOrder::new(true, 1, vec![Cursor, Key(0)]);
        let at = order
            .resume(&request(ReadMode::Incremental, json!({"cursor": "x"})))
            .unwrap()
            .unwrap();
        assert_eq!((at.values, at.inclusive), (vec![json!("x")], true));
        let e = order
            .resume(&request(ReadMode::Incremental, json!({"key": [1]})))
            .unwrap_err();
        assert_eq!(e.kind, crate::api::ErrorKind::CONFIG);
        assert!(
            e.message.contains("comes from a full read"),
            "{}",
            e.message
        );
        assert!(e.message.contains("reset"), "{}", e.message);
        let full = RowOrder::new(false, 1, vec![Key(0)]);
        let e = full
            .resume(&request(ReadMode::Full, json!({"cursor": 1, "key": [1]})))
            .unwrap_err();
        assert!(e.message.contains("incremental read"), "{}", e.message);
        let e = full
            .resume(&request(ReadMode::Full, json!({"key": [1, 2]})))
            .unwrap_err();
        assert!(e.message.contains("2 key values"), "{}", e.message);
        let e = full
            .resume(&request(ReadMode::Full, json!({"key": 5})))
            .unwrap_err();
        assert!(e.message.contains("not a list"), "{}", e.message);
        assert_eq!(
            full.resume(&request(ReadMode::Full, json!({"key": []})))
                .unwrap(),
            None
        );
    }
}
