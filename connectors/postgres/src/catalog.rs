//! What the database has: tables and views of the schema, their columns with native and
//! logical types, and their keys. Also the one mapping of native types to logical types.

use lockstep_sql_kit::keys::TableKeys;
use lockstep_sql_kit::{Dialect, PostgresDialect};
use std::collections::HashMap;

use lockstep_plugin_sdk::{ConnectorError, DataType, FieldInfo, Result, StreamInfo};
use sqlx::{PgConnection, Row};

use crate::error::map_sqlx;

/// How a column's values arrive in a binary COPY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    /// `numeric(p,s)` read into a decimal(p,s).
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// Any `numeric` read into its exact text.
    NumericText,
    /// UTF-8 text as is: text, varchar, char(n), name, json, enum labels, and `::text` casts.
    Text,
    /// jsonb: a version byte, then the text.
    Jsonb,
    Bytea,
    Uuid,
    Date,
    Time,
    Timestamp,
    TimestampTz,
}

/// The expression a read selects for a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadExpr {
    /// The column itself.
    Plain,
    /// `col::text`, for types without a logical equivalent.
    Text,
    /// `to_json(col)::text`, for arrays.
    Json,
}

/// One column of a table or view.
#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, such as `character varying(20)`.
    pub native: String,
    /// The base type as a quoted `"schema"."typname"`: the type values are cast to. It has no
    /// modifier (explicit casts to `varchar(n)`, `character` or a domain with a length would
    /// truncate silently); the column's own limits apply on assignment, where PostgreSQL
    /// raises errors instead.
    pub cast_type: String,
    /// The name of the base type (domains resolved) in `pg_catalog`, or empty for types
    /// defined elsewhere (extensions, user types).
    pub base: String,
    /// `format_type` of the base type, without modifier.
    pub base_type: String,
    /// The base type is an enum.
    pub is_enum: bool,
    /// The base type is an array.
    pub is_array: bool,
    /// The type modifier in force (the column's, else its domain's), -1 when none.
    pub typmod: i32,
    pub not_null: bool,
    /// A generated column: it cannot be written.
    pub generated: bool,
    pub logical: DataType,
    pub wire: Wire,
    pub expr: ReadExpr,
}

impl Column {
    /// The select-list expression that reads this column.
    pub fn read_expr(&self) -> String {
        let col = PostgresDialect.quote_ident(&self.name);
        match self.expr {
            ReadExpr::Plain => col,
            ReadExpr::Text => format!("{col}::text"),
            ReadExpr::Json => format!("to_json({col})::text"),
        }
    }

    /// The `(precision, scale)` of a `numeric(p,s)` column.
    pub fn numeric_typmod(&self) -> Option<(i32, i32)> {
        numeric_typmod(self.typmod)
    }

    /// The length limit of `varchar(n)` / `char(n)`.
    pub fn char_limit(&self) -> Option<usize> {
        match self.base.as_str() {
            "varchar" | "bpchar" if self.typmod >= 4 => Some((self.typmod - 4) as usize),
            _ => None,
        }
    }

    /// The fractional-second precision of `time(p)` / `timestamp(p)`.
    pub fn seconds_precision(&self) -> Option<u32> {
        match self.base.as_str() {
            "time" | "timestamp" | "timestamptz" if (0..6).contains(&self.typmod) => {
                Some(self.typmod as u32)
            }
            _ => None,
        }
    }

    /// Whether the type has an equality operator (json, xml and geometric types do not), so
    /// that `IS DISTINCT FROM` can compare it directly; others are compared as text.
    pub fn comparable(&self) -> bool {
        let elem = self.base.trim_start_matches('_');
        !matches!(
            elem,
            "json" | "xml" | "point" | "line" | "lseg" | "box" | "path" | "polygon" | "circle"
        )
    }
}

/// The kind of a relation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelKind {
    Table,
    View,
    MaterializedView,
    Foreign,
}

impl RelKind {
    pub fn describe(self) -> &'static str {
        match self {
            RelKind::Table => "table",
            RelKind::View => "view",
            RelKind::MaterializedView => "materialized view",
            RelKind::Foreign => "foreign table",
        }
    }
}

/// A table or view of the schema.
#[derive(Clone, Debug)]
pub struct Table {
    pub name: String,
    pub kind: RelKind,
    pub columns: Vec<Column>,
    /// The primary key, and the column sets of every unique, non-partial, immediate index
    /// without expressions.
    pub keys: TableKeys,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Whether `key` (in any order) is exactly the column set of a unique index.
    pub fn has_unique_key(&self, key: &[String]) -> bool {
        self.keys.has_unique_key(key)
    }

    /// The column names, for messages.
    pub fn column_names(&self) -> String {
        self.columns
            .iter()
            .map(|c| format!("`{}`", c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// This table as a stream of the catalog.
    pub fn stream_info(&self) -> StreamInfo {
        let fields = self
            .columns
            .iter()
            .map(|c| FieldInfo {
                name: c.name.clone(),
                data_type: c.logical,
                nullable: !c.not_null,
                native_type: Some(c.native.clone()),
            })
            .collect();
        let mut cursor_candidates: Vec<String> = self
            .columns
            .iter()
            .filter(|c| {
                let name = c.name.to_lowercase();
                matches!(c.logical, DataType::Timestamp | DataType::TimestampTz)
                    && ["updated", "modified", "changed"]
                        .iter()
                        .any(|w| name.contains(w))
            })
            .map(|c| c.name.clone())
            .collect();
        if let [pk] = self.keys.primary_key.as_slice() {
            if self
                .column(pk)
                .is_some_and(|c| matches!(c.base.as_str(), "int2" | "int4" | "int8"))
            {
                cursor_candidates.push(pk.clone());
            }
        }
        StreamInfo {
            name: self.name.clone(),
            fields,
            primary_key: self.keys.primary_key.clone(),
            cursor_candidates,
        }
    }
}

/// `(precision, scale)` of a numeric type modifier.
pub fn numeric_typmod(typmod: i32) -> Option<(i32, i32)> {
    if typmod < 4 {
        return None;
    }
    let t = typmod - 4;
    let precision = (t >> 16) & 0xffff;
    // The scale is an 11-bit signed field since PostgreSQL 15.
    let scale = ((t & 0x7ff) ^ 1024) - 1024;
    Some((precision, scale))
}

struct TypeRow {
    name: String,
    schema: String,
    builtin: bool,
    typtype: u8,
    category: u8,
    base: u32,
    typmod: i32,
    formatted: String,
}

/// Whether `schema` exists.
pub async fn schema_exists(conn: &mut PgConnection, schema: &str) -> Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(conn)
        .await
        .map_err(map_sqlx)
}

/// The tables and views of `schema` (only `only` when given), columns in order.
pub async fn load_tables(
    conn: &mut PgConnection,
    schema: &str,
    only: Option<&str>,
) -> Result<Vec<Table>> {
    let rows = sqlx::query(
        "SELECT c.relname::text, c.relkind::text, a.attname::text, a.atttypid::int8, \
                a.atttypmod, a.attnotnull, format_type(a.atttypid, a.atttypmod), \
                a.attgenerated::text \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_attribute a \
           ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
           AND NOT c.relispartition AND ($2::text IS NULL OR c.relname = $2) \
         ORDER BY c.relname, a.attnum",
    )
    .bind(schema)
    .bind(only)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_sqlx)?;

    let mut types: HashMap<u32, TypeRow> = HashMap::new();
    let mut wanted: Vec<i64> = rows.iter().map(|r| r.get::<i64, _>(3)).collect();
    wanted.sort_unstable();
    wanted.dedup();
    // Resolve domains down to their base types (domains may stack).
    for _ in 0..16 {
        if wanted.is_empty() {
            break;
        }
        let found = sqlx::query(
            "SELECT t.oid::int8, t.typname::text, n.nspname = 'pg_catalog', t.typtype::text, \
                    t.typcategory::text, t.typbasetype::int8, t.typtypmod, \
                    format_type(t.oid, NULL), n.nspname::text \
             FROM pg_catalog.pg_type t \
             JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
             WHERE t.oid::int8 = ANY($1)",
        )
        .bind(&wanted)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        wanted.clear();
        for r in found {
            let oid = r.get::<i64, _>(0) as u32;
            let row = TypeRow {
                name: r.get(1),
                schema: r.get(8),
                builtin: r.get(2),
                typtype: first_byte(&r.get::<String, _>(3)),
                category: first_byte(&r.get::<String, _>(4)),
                base: r.get::<i64, _>(5) as u32,
                typmod: r.get(6),
                formatted: r.get(7),
            };
            if row.typtype == b'd' && !types.contains_key(&row.base) {
                wanted.push(row.base as i64);
            }
            types.insert(oid, row);
        }
    }

    let mut tables: Vec<Table> = Vec::new();
    for r in rows {
        let table_name: String = r.get(0);
        let kind = match r.get::<String, _>(1).as_str() {
            "v" => RelKind::View,
            "m" => RelKind::MaterializedView,
            "f" => RelKind::Foreign,
            _ => RelKind::Table,
        };
        if tables.last().is_none_or(|t| t.name != table_name) {
            tables.push(Table {
                name: table_name,
                kind,
                columns: Vec::new(),
                keys: TableKeys::default(),
            });
        }
        let type_oid = r.get::<i64, _>(3) as u32;
        let mut typmod: i32 = r.get(4);
        let mut base = types.get(&type_oid);
        let mut depth = 0;
        while let Some(t) = base.filter(|t| t.typtype == b'd' && depth < 16) {
            if typmod == -1 {
                typmod = t.typmod;
            }
            base = types.get(&t.base);
            depth += 1;
        }
        let base = base.ok_or_else(|| {
            ConnectorError::internal(format!("type {type_oid} of a column is not in pg_type"))
        })?;
        let (logical, wire, expr) = map_type(base, typmod);
        let column = Column {
            name: r.get(2),
            native: r.get(6),
            cast_type: qualified(&base.schema, &base.name),
            base: if base.builtin {
                base.name.clone()
            } else {
                String::new()
            },
            base_type: base.formatted.clone(),
            is_enum: base.typtype == b'e',
            is_array: base.category == b'A',
            typmod,
            not_null: r.get(5),
            generated: !r.get::<String, _>(7).is_empty(),
            logical,
            wire,
            expr,
        };
        if let Some(t) = tables.last_mut() {
            t.columns.push(column);
        }
    }

    let keys = sqlx::query(
        "SELECT c.relname::text, i.indisprimary, \
                ARRAY(SELECT a.attname::text \
                      FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                      JOIN pg_catalog.pg_attribute a \
                        ON a.attrelid = c.oid AND a.attnum = k.attnum \
                      WHERE k.ord <= i.indnkeyatts ORDER BY k.ord) \
         FROM pg_catalog.pg_index i \
         JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND i.indisunique AND i.indimmediate \
           AND i.indpred IS NULL AND i.indexprs IS NULL \
           AND ($2::text IS NULL OR c.relname = $2) \
         ORDER BY c.relname, NOT i.indisprimary, i.indexrelid",
    )
    .bind(schema)
    .bind(only)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    for r in keys {
        let name: String = r.get(0);
        let primary: bool = r.get(1);
        let columns: Vec<String> = r.get(2);
        if let Some(t) = tables.iter_mut().find(|t| t.name == name) {
            t.keys.add_unique_index(columns, primary, true);
        }
    }
    Ok(tables)
}

fn first_byte(s: &str) -> u8 {
    s.as_bytes().first().copied().unwrap_or(0)
}

/// The logical type of a (domain-resolved) base type, how its values are read, and through
/// which expression. See the README's type table.
fn map_type(base: &TypeRow, typmod: i32) -> (DataType, Wire, ReadExpr) {
    use ReadExpr::*;
    if base.typtype == b'e' {
        return (DataType::Text, Wire::Text, Plain);
    }
    if base.category == b'A' {
        return (DataType::Json, Wire::Text, Json);
    }
    if !base.builtin {
        return (DataType::Text, Wire::Text, Text);
    }
    match base.name.as_str() {
        "bool" => (DataType::Boolean, Wire::Bool, Plain),
        "int2" => (DataType::Int32, Wire::Int2, Plain),
        "int4" => (DataType::Int32, Wire::Int4, Plain),
        "int8" => (DataType::Int64, Wire::Int8, Plain),
        "oid" => (DataType::Int64, Wire::Oid, Plain),
        "float4" => (DataType::Float32, Wire::Float4, Plain),
        "float8" => (DataType::Float64, Wire::Float8, Plain),
        "numeric" => match numeric_typmod(typmod) {
            Some((p, s)) if (1..=38).contains(&p) && (0..=p).contains(&s) => {
                let (precision, scale) = (p as u8, s as i8);
                (
                    DataType::Decimal { precision, scale },
                    Wire::Decimal { precision, scale },
                    Plain,
                )
            }
            // Unconstrained numeric (and numeric(p,s) beyond decimal(38)) keeps every digit
            // as text; NaN and infinities included.
            _ => (DataType::Text, Wire::NumericText, Plain),
        },
        "text" | "varchar" | "bpchar" | "name" => (DataType::Text, Wire::Text, Plain),
        "bytea" => (DataType::Binary, Wire::Bytea, Plain),
        "date" => (DataType::Date, Wire::Date, Plain),
        "time" => (DataType::Time, Wire::Time, Plain),
        "timestamp" => (DataType::Timestamp, Wire::Timestamp, Plain),
        "timestamptz" => (DataType::TimestampTz, Wire::TimestampTz, Plain),
        "uuid" => (DataType::Uuid, Wire::Uuid, Plain),
        "json" => (DataType::Json, Wire::Text, Plain),
        "jsonb" => (DataType::Json, Wire::Jsonb, Plain),
        // interval, timetz, inet, money, xml, bit, ranges, geometric types, "char", ...
        _ => (DataType::Text, Wire::Text, Text),
    }
}

/// The native type a created column gets for a logical type.
pub fn native_for(data_type: DataType) -> String {
    match data_type {
        DataType::Boolean => "boolean".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal { precision, scale } => format!("numeric({precision},{scale})"),
        DataType::Text => "text".into(),
        DataType::Binary => "bytea".into(),
        DataType::Date => "date".into(),
        DataType::Time => "time".into(),
        DataType::Timestamp => "timestamp".into(),
        DataType::TimestampTz => "timestamptz".into(),
        DataType::Uuid => "uuid".into(),
        DataType::Json => "jsonb".into(),
    }
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!(
        "{}.{}",
        PostgresDialect.quote_ident(schema),
        PostgresDialect.quote_ident(table)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_type_modifiers_decode() {
        // numeric(10,2) has typmod ((10 << 16) | 2) + 4.
        assert_eq!(numeric_typmod((10 << 16 | 2) + 4), Some((10, 2)));
        assert_eq!(numeric_typmod(-1), None);
        // numeric(5,-2): the scale is stored as an 11-bit two's complement field.
        assert_eq!(
            numeric_typmod((5 << 16 | (0x7ff & -2i32)) + 4),
            Some((5, -2))
        );
    }
}
