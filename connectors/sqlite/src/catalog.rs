//! Reading the schema: tables, columns, primary keys and unique indexes, and the catalog
//! built from them.

use lockstep_plugin_sdk::{
    tracing, Catalog, ConnectorError, DataType, FieldInfo, Result, StreamInfo,
};
use sqlx::sqlite::SqliteConnection;
use sqlx::Row;

use crate::error::db_error;
use crate::types::{logical_type, Affinity};

/// One column of a table.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub name: String,
    /// The declared type as written (may be empty).
    pub declared: String,
    pub data_type: DataType,
    pub affinity: Affinity,
    /// Whether the column can hold NULL.
    pub nullable: bool,
    /// Position in the primary key, from 1; 0 when not part of it.
    pub pk: i64,
    /// A generated column: readable, not writable.
    pub generated: bool,
}

/// One table and what the connector needs to know about it.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    /// The primary key columns, in key order.
    pub primary_key: Vec<String>,
    /// The column sets of unique, non-partial indexes (the primary key's included).
    pub unique_sets: Vec<Vec<String>>,
    pub without_rowid: bool,
}

impl Table {
    /// The column named `name`: the exact name first, then ignoring ASCII case as SQLite does.
    pub(crate) fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name).or_else(|| {
            self.columns
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(name))
        })
    }

    /// Whether ordering by `names` is a total order: they include every column of a unique
    /// index whose columns are all NOT NULL (SQLite lets many rows hold NULL in a unique
    /// column, and they would tie).
    pub(crate) fn orders_totally(&self, names: &[String]) -> bool {
        self.unique_sets.iter().any(|set| {
            !set.is_empty()
                && set.iter().all(|c| {
                    names.iter().any(|n| n.eq_ignore_ascii_case(c))
                        && self.column(c).is_some_and(|col| !col.nullable)
                })
        })
    }

    /// Whether a unique index covers exactly the columns `names` (as `ON CONFLICT` needs).
    pub(crate) fn has_unique_exactly(&self, names: &[String]) -> bool {
        self.unique_sets.iter().any(|set| {
            set.len() == names.len()
                && set
                    .iter()
                    .all(|c| names.iter().any(|n| n.eq_ignore_ascii_case(c)))
        })
    }

    /// An unquoted alias of the rowid that no column shadows, for tables that have a rowid.
    pub(crate) fn rowid_alias(&self) -> Option<&'static str> {
        if self.without_rowid {
            return None;
        }
        ["rowid", "_rowid_", "oid"]
            .into_iter()
            .find(|alias| self.column(alias).is_none())
    }

    /// The stream this table offers.
    pub(crate) fn stream_info(&self) -> StreamInfo {
        StreamInfo {
            name: self.name.clone(),
            fields: self.columns.iter().map(Column::field_info).collect(),
            primary_key: self.primary_key.clone(),
            cursor_candidates: self.cursor_candidates(),
        }
    }

    /// Columns named like modification times first, then other timestamps, then a
    /// single-column integer primary key.
    fn cursor_candidates(&self) -> Vec<String> {
        let mut named = Vec::new();
        let mut timestamps = Vec::new();
        for c in &self.columns {
            let normalized: String = c
                .name
                .chars()
                .filter(|ch| ch.is_alphanumeric())
                .collect::<String>()
                .to_lowercase();
            let is_temporal = matches!(c.data_type, DataType::Timestamp | DataType::TimestampTz);
            if MODIFICATION_NAMES.contains(&normalized.as_str()) {
                named.push(c.name.clone());
            } else if is_temporal {
                timestamps.push(c.name.clone());
            }
        }
        named.extend(timestamps);
        if let [pk] = self.primary_key.as_slice() {
            let integer = self
                .column(pk)
                .is_some_and(|c| matches!(c.data_type, DataType::Int64 | DataType::Int32));
            if integer && !named.contains(pk) {
                named.push(pk.clone());
            }
        }
        named
    }
}

/// Column names (lower case, alphanumeric only) that say "last modified".
const MODIFICATION_NAMES: &[&str] = &[
    "updatedat",
    "updatedon",
    "updated",
    "updatetime",
    "updatedtime",
    "updatedate",
    "modified",
    "modifiedat",
    "modifiedon",
    "modifiedtime",
    "modifieddate",
    "lastmodified",
    "lastmodifiedat",
    "lastmodifiedon",
    "lastmodifieddate",
    "lastupdated",
    "lastupdatedat",
    "lastupdate",
    "changedat",
    "lastchanged",
    "lastchangedat",
    "mtime",
];

impl Column {
    pub(crate) fn field_info(&self) -> FieldInfo {
        FieldInfo {
            name: self.name.clone(),
            data_type: self.data_type,
            nullable: self.nullable,
            native_type: Some(self.declared.clone()),
        }
    }
}

/// The names of the ordinary tables of the main schema (views, virtual and shadow tables,
/// and SQLite's own `sqlite_*` tables are left out), sorted.
pub(crate) async fn table_names(conn: &mut SqliteConnection) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error("listing tables"))?;
    rows.iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<std::result::Result<_, _>>()
        .map_err(db_error("listing tables"))
}

/// The table named `name` (exactly, or else ignoring ASCII case), or `None`.
pub(crate) async fn find_table(conn: &mut SqliteConnection, name: &str) -> Result<Option<Table>> {
    let names = table_names(conn).await?;
    let found = names
        .iter()
        .find(|n| *n == name)
        .or_else(|| names.iter().find(|n| n.eq_ignore_ascii_case(name)));
    match found {
        Some(n) => load_table(conn, &n.clone()).await.map(Some),
        None => Ok(None),
    }
}

/// A schema error for a stream that does not exist, listing those that do.
pub(crate) async fn unknown_stream(conn: &mut SqliteConnection, name: &str) -> ConnectorError {
    let names = table_names(conn).await.unwrap_or_default();
    let list = if names.is_empty() {
        "the database has no tables".to_string()
    } else {
        format!("tables: {}", names.join(", "))
    };
    ConnectorError::schema(format!(
        "there is no table `{name}` in the SQLite database ({list})"
    ))
}

/// Loads the columns, keys and unique indexes of table `name`.
pub(crate) async fn load_table(conn: &mut SqliteConnection, name: &str) -> Result<Table> {
    let what = || format!("reading the schema of table `{name}`");
    let without_rowid: bool =
        sqlx::query_scalar("SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error(what()))?
            .unwrap_or(false);

    let rows = sqlx::query(
        "SELECT name, type, \"notnull\", pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error(what()))?;
    let mut columns = Vec::with_capacity(rows.len());
    for row in &rows {
        let get = |e: sqlx::Error| db_error(what())(e);
        let column_name: String = row.try_get(0).map_err(get)?;
        let declared: String = row
            .try_get::<Option<String>, _>(1)
            .map_err(get)?
            .unwrap_or_default();
        let not_null: bool = row.try_get(2).map_err(get)?;
        let pk: i64 = row.try_get(3).map_err(get)?;
        let hidden: i64 = row.try_get(4).map_err(get)?;
        if hidden == 1 {
            // A hidden column of a virtual table.
            continue;
        }
        columns.push(Column {
            name: column_name,
            data_type: logical_type(&declared),
            affinity: Affinity::of(&declared),
            declared,
            nullable: !not_null,
            pk,
            generated: hidden == 2 || hidden == 3,
        });
    }
    if columns.is_empty() {
        return Err(ConnectorError::schema(format!(
            "table `{name}` has no columns"
        )));
    }
    let mut pk_columns: Vec<&Column> = columns.iter().filter(|c| c.pk > 0).collect();
    pk_columns.sort_by_key(|c| c.pk);
    let primary_key: Vec<String> = pk_columns.iter().map(|c| c.name.clone()).collect();
    // Primary key columns that never hold NULL: those of WITHOUT ROWID tables, and an
    // INTEGER PRIMARY KEY (the rowid). Other rowid tables allow NULL in the key (a
    // long-standing SQLite quirk) unless NOT NULL is declared.
    let rowid_alias = primary_key.len() == 1
        && !without_rowid
        && pk_columns[0]
            .declared
            .trim()
            .eq_ignore_ascii_case("INTEGER");
    for c in columns.iter_mut().filter(|c| c.pk > 0) {
        if without_rowid || rowid_alias {
            c.nullable = false;
        }
    }

    let mut unique_sets = Vec::new();
    if !primary_key.is_empty() {
        unique_sets.push(primary_key.clone());
    }
    let indexes = sqlx::query("SELECT name, \"unique\", partial FROM pragma_index_list(?1)")
        .bind(name)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error(what()))?;
    for index in &indexes {
        let index_name: String = index.try_get(0).map_err(db_error(what()))?;
        let unique: bool = index.try_get(1).map_err(db_error(what()))?;
        let partial: bool = index.try_get(2).map_err(db_error(what()))?;
        if !unique || partial {
            continue;
        }
        let cols = sqlx::query("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
            .bind(&index_name)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error(what()))?;
        let names: Vec<Option<String>> = cols
            .iter()
            .map(|r| r.try_get::<Option<String>, _>(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(db_error(what()))?;
        // An index on an expression has a NULL name for that part; it proves nothing here.
        if let Some(names) = names.into_iter().collect::<Option<Vec<String>>>() {
            if !names.is_empty() && !unique_sets.contains(&names) {
                unique_sets.push(names);
            }
        }
    }
    Ok(Table {
        name: name.to_owned(),
        columns,
        primary_key,
        unique_sets,
        without_rowid,
    })
}

/// The catalog of every table. A table whose schema cannot be read (a virtual table whose
/// module is missing, say) is left out with a warning rather than failing discovery.
pub(crate) async fn catalog(conn: &mut SqliteConnection) -> Result<Catalog> {
    let mut streams = Vec::new();
    for name in table_names(conn).await? {
        match load_table(conn, &name).await {
            Ok(table) => streams.push(table.stream_info()),
            Err(e) => tracing::warn!(table = %name, "table left out of the catalog: {}", e.message),
        }
    }
    Ok(Catalog { streams })
}
