//! Checkpoints of cursor-based reads: reading one back, and writing one after a batch.
//!
//! A read ordered by (cursor, key) — or by the key alone in full mode — checkpoints the
//! last row it delivered as a [`CursorCheckpoint`]: `{"cursor": c, "key": [k1, k2]}`, or
//! `{"key": [k1, k2]}` for a full read. [`resume_point`] turns a stored checkpoint back into
//! the order values a read resumes strictly after; [`checkpoint_after`] builds one from the
//! order values of a batch's last row.
//!
//! Invariants:
//! - A missing or `null` checkpoint, an incremental checkpoint whose cursor is `null`, and a
//!   full checkpoint without key values all mean "from the start".
//! - A checkpoint may carry a cursor without key values (a prefix of the order); it never
//!   carries a different number of key values than the read's key has fields: that is a
//!   `config` error naming the stream, the checkpoint and how to recover.
//! - Values keep their JSON form; converting them to the system's types is the connector's.

use serde_json::{json, Value};

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
    let bad = |why: &str| {
        ConnectorError::config(format!(
            "reading `{stream}`: the checkpoint {checkpoint} cannot be resumed: {why}; if the \
             sync's key or cursor changed since it was saved, reset the sync's checkpoint to \
             read from the start"
        ))
    };
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
}
