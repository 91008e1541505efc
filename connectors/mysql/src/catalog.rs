//! Tables as information_schema describes them, the mapping of MySQL types onto logical
//! types (for reading) and of logical types onto MySQL types (for creating tables).

use lockstep_sql_kit::keys::TableKeys;
use lockstep_sql_kit::{Dialect, MySqlDialect};
use std::collections::HashMap;

use lockstep_plugin_sdk::{
    tracing, Catalog, ConnectorError, DataType, FieldInfo, Result, StreamInfo,
};
use sqlx::mysql::MySqlConnection;
use sqlx::Row;

use crate::session::{Db, Flavor};

/// How a column's values come off the wire; the logical type says what they become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wire {
    /// Signed integers (and YEAR).
    Int,
    /// Unsigned integers, which must be read as u64 to keep their high bit.
    UInt,
    /// BIT(n): big-endian bytes.
    Bits,
    Float,
    Double,
    /// DECIMAL: exact text.
    Decimal,
    /// Character data (text, enum, set, json, uuid, inet).
    Text,
    /// Byte strings (binary, blobs, geometry).
    Bytes,
    Date,
    Time,
    /// DATETIME and TIMESTAMP (UTC in our sessions).
    DateTime,
}

/// One column of a table.
#[derive(Clone, Debug)]
pub(crate) struct Column {
    pub name: String,
    /// information_schema DATA_TYPE, lower case (`varchar`).
    pub data_type: String,
    /// information_schema COLUMN_TYPE, lower case (`varchar(255)`, `int(10) unsigned`).
    pub column_type: String,
    pub nullable: bool,
    pub numeric_precision: Option<u32>,
    pub numeric_scale: Option<u32>,
    pub datetime_precision: Option<u32>,
    pub auto_increment: bool,
    /// MariaDB's JSON alias: longtext with a `json_valid` check.
    pub json_check: bool,
    /// How the column is read, or `None` when Lockstep has no type for it.
    pub mapping: Option<(DataType, Wire)>,
}

impl Column {
    pub fn logical(&self) -> Option<DataType> {
        self.mapping.map(|(t, _)| t)
    }

    pub fn field_info(&self) -> Option<FieldInfo> {
        Some(FieldInfo {
            name: self.name.clone(),
            data_type: self.logical()?,
            nullable: self.nullable,
            native_type: Some(if self.json_check {
                "json".to_owned()
            } else {
                self.column_type.clone()
            }),
        })
    }

    /// Whether ORDER BY on the raw column disagrees with `>` on its text (ENUM and SET sort
    /// by their index, but compare with text as text), so keyset pagination must use text.
    pub fn sorts_by_index(&self) -> bool {
        matches!(self.data_type.as_str(), "enum" | "set")
    }

    /// The SQL expression to order and compare this column by.
    pub fn order_expr(&self) -> String {
        if self.sorts_by_index() {
            format!("CAST({} AS CHAR)", MySqlDialect.quote_ident(&self.name))
        } else {
            MySqlDialect.quote_ident(&self.name)
        }
    }
}

/// A table or view of the database.
#[derive(Clone, Debug)]
pub(crate) struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    /// The primary key, and every unique index (the primary key included) over whole column
    /// values.
    pub keys: TableKeys,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The columns Lockstep can carry, as a stream.
    pub fn stream_info(&self) -> StreamInfo {
        let fields: Vec<FieldInfo> = self.columns.iter().filter_map(Column::field_info).collect();
        let cursor_candidates = self
            .columns
            .iter()
            .filter(|c| {
                matches!(
                    c.logical(),
                    Some(DataType::Timestamp | DataType::TimestampTz)
                ) || (c.auto_increment && matches!(c.mapping, Some((_, Wire::Int | Wire::UInt))))
            })
            .map(|c| c.name.clone())
            .collect();
        StreamInfo {
            name: self.name.clone(),
            fields,
            primary_key: self.keys.primary_key.clone(),
            cursor_candidates,
        }
    }

    /// Whether a unique index covers exactly `key` (in any order).
    pub fn has_unique_key(&self, key: &[String]) -> bool {
        self.keys.has_unique_key(key)
    }
}

/// Maps a column's MySQL type onto a logical type and a wire decoding.
pub(crate) fn map_type(c: &Column) -> Option<(DataType, Wire)> {
    let unsigned = c.column_type.contains("unsigned");
    let int = if unsigned { Wire::UInt } else { Wire::Int };
    Some(match c.data_type.as_str() {
        "tinyint" if c.column_type.starts_with("tinyint(1)") => (DataType::Boolean, int),
        "bool" | "boolean" => (DataType::Boolean, int),
        "tinyint" | "smallint" | "mediumint" => (DataType::Int32, int),
        "int" | "integer" if unsigned => (DataType::Int64, Wire::UInt),
        "int" | "integer" => (DataType::Int32, Wire::Int),
        "bigint" if unsigned => (
            DataType::Decimal {
                precision: 20,
                scale: 0,
            },
            Wire::UInt,
        ),
        "bigint" => (DataType::Int64, Wire::Int),
        "year" => (DataType::Int32, Wire::Int),
        "float" => (DataType::Float32, Wire::Float),
        "double" | "real" | "double precision" => (DataType::Float64, Wire::Double),
        "decimal" | "numeric" | "fixed" | "dec" => {
            let precision = c.numeric_precision.unwrap_or(10);
            let scale = c.numeric_scale.unwrap_or(0);
            if precision <= 38 {
                (
                    DataType::Decimal {
                        precision: precision.max(1) as u8,
                        scale: scale as i8,
                    },
                    Wire::Decimal,
                )
            } else {
                // Arrow's Decimal128 holds 38 digits; wider decimals travel as exact text.
                (DataType::Text, Wire::Decimal)
            }
        }
        "longtext" if c.json_check => (DataType::Json, Wire::Text),
        "json" => (DataType::Json, Wire::Text),
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set"
        | "inet4" | "inet6" => (DataType::Text, Wire::Text),
        "uuid" => (DataType::Uuid, Wire::Text),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            (DataType::Binary, Wire::Bytes)
        }
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => {
            (DataType::Binary, Wire::Bytes)
        }
        "bit" if c.column_type == "bit(1)" => (DataType::Boolean, Wire::Bits),
        "bit" => (DataType::Binary, Wire::Bits),
        "date" => (DataType::Date, Wire::Date),
        "time" => (DataType::Time, Wire::Time),
        "datetime" => (DataType::Timestamp, Wire::DateTime),
        "timestamp" => (DataType::TimestampTz, Wire::DateTime),
        _ => return None,
    })
}

fn text(row: &sqlx::mysql::MySqlRow, i: usize) -> Result<Option<String>, sqlx::Error> {
    row.try_get_unchecked::<Option<String>, _>(i)
}

fn number(row: &sqlx::mysql::MySqlRow, i: usize) -> Result<Option<u32>, sqlx::Error> {
    Ok(text(row, i)?.and_then(|s| s.trim().parse().ok()))
}

/// Loads the tables of the connection's database (only `only` when given, matched exactly).
pub(crate) async fn load_tables(
    db: &Db,
    conn: &mut MySqlConnection,
    flavor: Flavor,
    only: Option<&str>,
) -> Result<Vec<Table>> {
    let what = format!("reading the tables of {}", db.location);
    let filter = if only.is_some() {
        " AND c.TABLE_NAME = ?"
    } else {
        ""
    };
    // Every value is selected as text: MySQL and MariaDB disagree on the types of
    // information_schema columns, and text decodes the same way on both.
    let columns_sql = format!(
        "SELECT c.TABLE_NAME, c.COLUMN_NAME, LOWER(c.DATA_TYPE), LOWER(c.COLUMN_TYPE), \
         c.IS_NULLABLE, CAST(c.NUMERIC_PRECISION AS CHAR), CAST(c.NUMERIC_SCALE AS CHAR), \
         CAST(c.DATETIME_PRECISION AS CHAR), LOWER(c.EXTRA) \
         FROM information_schema.COLUMNS c \
         JOIN information_schema.TABLES t \
           ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
         WHERE c.TABLE_SCHEMA = DATABASE(){filter} \
         ORDER BY c.ORDINAL_POSITION"
    );
    let mut query = sqlx::query(&columns_sql);
    if let Some(name) = only {
        query = query.bind(name);
    }
    let rows = query
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| db.error(e, &what))?;

    let json_checks = if flavor.mariadb {
        load_json_checks(db, conn, only).await?
    } else {
        Vec::new()
    };

    // Grouped by exact name: information_schema compares names case-insensitively on some
    // servers, so neither its filter nor its order can be trusted to keep `t` and `T` apart.
    let mut tables: Vec<Table> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for row in &rows {
        let decode = |e| db.error(e, &what);
        let table = text(row, 0).map_err(decode)?.unwrap_or_default();
        if only.is_some_and(|o| o != table) {
            continue;
        }
        let name = text(row, 1).map_err(decode)?.unwrap_or_default();
        let mut column = Column {
            json_check: json_checks.iter().any(|(t, c)| *t == table && *c == name),
            name,
            data_type: text(row, 2).map_err(decode)?.unwrap_or_default(),
            column_type: text(row, 3).map_err(decode)?.unwrap_or_default(),
            nullable: text(row, 4).map_err(decode)?.as_deref() == Some("YES"),
            numeric_precision: number(row, 5).map_err(decode)?,
            numeric_scale: number(row, 6).map_err(decode)?,
            datetime_precision: number(row, 7).map_err(decode)?,
            auto_increment: text(row, 8)
                .map_err(decode)?
                .is_some_and(|e| e.contains("auto_increment")),
            mapping: None,
        };
        column.mapping = map_type(&column);
        if column.mapping.is_none() {
            tracing::warn!(
                table = %table,
                column = %column.name,
                column_type = %column.column_type,
                "column type has no Lockstep equivalent; the column is left out"
            );
        }
        match by_name.get(&table) {
            Some(&i) => tables[i].columns.push(column),
            None => {
                by_name.insert(table.clone(), tables.len());
                tables.push(Table {
                    name: table,
                    columns: vec![column],
                    keys: TableKeys::default(),
                });
            }
        }
    }
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    let by_name: HashMap<String, usize> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();

    let index_sql = format!(
        "SELECT TABLE_NAME, INDEX_NAME, COLUMN_NAME, CAST(SUB_PART AS CHAR) \
         FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND NON_UNIQUE = 0{} \
         ORDER BY SEQ_IN_INDEX",
        if only.is_some() {
            " AND TABLE_NAME = ?"
        } else {
            ""
        }
    );
    let mut query = sqlx::query(&index_sql);
    if let Some(name) = only {
        query = query.bind(name);
    }
    let rows = query
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| db.error(e, &what))?;
    // (table, index) -> (columns in index order, whether any column is only a prefix)
    type Index = ((String, String), (Vec<String>, bool));
    let mut indexes: Vec<Index> = Vec::new();
    for row in &rows {
        let decode = |e| db.error(e, &what);
        let table = text(row, 0).map_err(decode)?.unwrap_or_default();
        let index = text(row, 1).map_err(decode)?.unwrap_or_default();
        let column = text(row, 2).map_err(decode)?.unwrap_or_default();
        let prefix = text(row, 3).map_err(decode)?.is_some();
        match indexes
            .iter_mut()
            .find(|((t, i), _)| *t == table && *i == index)
        {
            Some((_, (cols, p))) => {
                cols.push(column);
                *p |= prefix;
            }
            None => indexes.push(((table, index), (vec![column], prefix))),
        }
    }
    for ((table, index), (columns, prefix)) in indexes {
        let Some(&i) = by_name.get(&table) else {
            continue;
        };
        tables[i]
            .keys
            .add_unique_index(columns, index == "PRIMARY", !prefix);
    }
    Ok(tables)
}

/// MariaDB's JSON columns: (table, column) pairs with a `json_valid(col)` check.
async fn load_json_checks(
    db: &Db,
    conn: &mut MySqlConnection,
    only: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let what = format!("reading the check constraints of {}", db.location);
    let sql = format!(
        "SELECT TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
         WHERE CONSTRAINT_SCHEMA = DATABASE(){}",
        if only.is_some() {
            " AND TABLE_NAME = ?"
        } else {
            ""
        }
    );
    let mut query = sqlx::query(&sql);
    if let Some(name) = only {
        query = query.bind(name);
    }
    let rows = query
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| db.error(e, &what))?;
    let mut out = Vec::new();
    for row in &rows {
        let table = text(row, 0)
            .map_err(|e| db.error(e, &what))?
            .unwrap_or_default();
        let clause = text(row, 1)
            .map_err(|e| db.error(e, &what))?
            .unwrap_or_default();
        if let Some(column) = json_valid_column(&clause) {
            out.push((table, column));
        }
    }
    Ok(out)
}

/// The column of a `json_valid(`col`)` check clause.
fn json_valid_column(clause: &str) -> Option<String> {
    let inner = clause.trim();
    let lower = inner.to_ascii_lowercase();
    if !lower.starts_with("json_valid(") || !inner.ends_with(')') {
        return None;
    }
    let arg = inner["json_valid(".len()..inner.len() - 1].trim();
    let name = arg.strip_prefix('`')?.strip_suffix('`')?;
    if name.replace("``", "").contains('`') {
        return None;
    }
    Some(name.replace("``", "`"))
}

/// The catalog of the connection's database.
pub(crate) async fn catalog(
    db: &Db,
    conn: &mut MySqlConnection,
    flavor: Flavor,
) -> Result<Catalog> {
    let tables = load_tables(db, conn, flavor, None).await?;
    Ok(Catalog {
        streams: tables.iter().map(Table::stream_info).collect(),
    })
}

/// One table, or a schema error that lists the tables there are.
pub(crate) async fn require_table(
    db: &Db,
    conn: &mut MySqlConnection,
    flavor: Flavor,
    name: &str,
) -> Result<Table> {
    if let Some(t) = load_tables(db, conn, flavor, Some(name))
        .await?
        .into_iter()
        .next()
    {
        return Ok(t);
    }
    let all = load_tables(db, conn, flavor, None).await?;
    let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
    Err(ConnectorError::schema(format!(
        "stream `{name}` does not exist in {}; streams there: {}",
        db.location,
        if names.is_empty() {
            "(none)".to_owned()
        } else {
            names.join(", ")
        }
    )))
}

/// The collation of created tables: binary and without pad, so that keys differing in
/// case, accents or trailing spaces stay distinct. The first one the server has wins.
pub(crate) async fn key_collation(db: &Db, conn: &mut MySqlConnection) -> Result<String> {
    let rows = sqlx::query(
        "SELECT COLLATION_NAME FROM information_schema.COLLATIONS \
         WHERE COLLATION_NAME IN ('utf8mb4_0900_bin', 'utf8mb4_nopad_bin')",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| db.error(e, "listing collations"))?;
    let names: Vec<String> = rows
        .iter()
        .filter_map(|r| text(r, 0).ok().flatten())
        .collect();
    Ok(["utf8mb4_0900_bin", "utf8mb4_nopad_bin"]
        .into_iter()
        .find(|c| names.iter().any(|n| n == c))
        .unwrap_or("utf8mb4_bin")
        .to_owned())
}

/// The MySQL column type created for a logical type. Key columns need bounded types, as
/// InnoDB cannot index whole TEXT or BLOB values.
pub(crate) fn create_type(t: DataType, is_key: bool, flavor: Flavor) -> Result<String, String> {
    Ok(match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal { precision, scale } => {
            if scale < 0 {
                // MySQL has no negative scale: widen to integers that hold every value.
                let p = precision as i32 - scale as i32;
                if p > 65 {
                    return Err(format!(
                        "decimal({precision},{scale}) needs more than 65 digits"
                    ));
                }
                format!("DECIMAL({p},0)")
            } else if scale > 30 {
                return Err(format!(
                    "decimal({precision},{scale}) has a scale above MySQL's maximum of 30"
                ));
            } else {
                format!("DECIMAL({},{scale})", precision.max(scale as u8).max(1))
            }
        }
        DataType::Text if is_key => "VARCHAR(255)".into(),
        DataType::Text => "LONGTEXT".into(),
        DataType::Binary if is_key => "VARBINARY(255)".into(),
        DataType::Binary => "LONGBLOB".into(),
        DataType::Date => "DATE".into(),
        DataType::Time => "TIME(6)".into(),
        DataType::Timestamp | DataType::TimestampTz => "DATETIME(6)".into(),
        DataType::Uuid if flavor.has_uuid_type() => "UUID".into(),
        DataType::Uuid => "CHAR(36) CHARACTER SET ascii COLLATE ascii_bin".into(),
        DataType::Json if is_key => "VARCHAR(255)".into(),
        DataType::Json => "JSON".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(data_type: &str, column_type: &str) -> Column {
        Column {
            name: "c".into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            nullable: true,
            numeric_precision: Some(12),
            numeric_scale: Some(3),
            datetime_precision: None,
            auto_increment: false,
            json_check: false,
            mapping: None,
        }
    }

    #[test]
    fn types_map_as_documented() {
        let t = |d: &str, c: &str| map_type(&column(d, c)).map(|m| m.0);
        assert_eq!(t("tinyint", "tinyint(1)"), Some(DataType::Boolean));
        assert_eq!(t("tinyint", "tinyint(4)"), Some(DataType::Int32));
        assert_eq!(t("int", "int(10) unsigned"), Some(DataType::Int64));
        assert_eq!(
            t("bigint", "bigint(20) unsigned"),
            Some(DataType::Decimal {
                precision: 20,
                scale: 0
            })
        );
        assert_eq!(
            t("decimal", "decimal(12,3)"),
            Some(DataType::Decimal {
                precision: 12,
                scale: 3
            })
        );
        assert_eq!(t("timestamp", "timestamp(6)"), Some(DataType::TimestampTz));
        assert_eq!(t("enum", "enum('a','b')"), Some(DataType::Text));
        assert_eq!(t("vector", "vector(3)"), None);
        let mut j = column("longtext", "longtext");
        j.json_check = true;
        assert_eq!(map_type(&j).map(|m| m.0), Some(DataType::Json));
    }

    #[test]
    fn json_checks_are_recognized() {
        assert_eq!(
            json_valid_column("json_valid(`doc`)").as_deref(),
            Some("doc")
        );
        assert_eq!(
            json_valid_column("json_valid(`a``b`)").as_deref(),
            Some("a`b")
        );
        assert_eq!(json_valid_column("`x` > 0"), None);
    }
}
