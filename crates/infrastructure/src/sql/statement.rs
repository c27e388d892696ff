//! A statement of the shared core: SQL text and the values to bind to it.

use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Postgres, Sqlite};
use uuid::Uuid;

/// One value to bind, typed by meaning rather than by column type: each
/// backend binds it as its schema stores it.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// An id: `uuid` on PostgreSQL, hyphenated text on SQLite.
    Id(Uuid),
    /// Text, or NULL.
    Text(Option<&'a str>),
    /// An integer (times are Unix milliseconds), or NULL.
    Int(Option<i64>),
    /// A JSON document: `jsonb` on PostgreSQL, text on SQLite.
    Json(&'a serde_json::Value),
}

/// SQL with `$1`-style placeholders (both databases read them) and its
/// values in placeholder order.
#[derive(Debug)]
pub struct Statement<'a> {
    sql: &'static str,
    values: Vec<Value<'a>>,
}

impl<'a> Statement<'a> {
    /// A statement with no values bound yet.
    pub fn new(sql: &'static str) -> Self {
        Self { sql, values: Vec::new() }
    }

    /// Binds the next placeholder to an id.
    #[must_use]
    pub fn id(mut self, id: Uuid) -> Self {
        self.values.push(Value::Id(id));
        self
    }

    /// Binds the next placeholder to text or NULL.
    #[must_use]
    pub fn text(mut self, text: impl Into<Option<&'a str>>) -> Self {
        self.values.push(Value::Text(text.into()));
        self
    }

    /// Binds the next placeholder to an integer or NULL.
    #[must_use]
    pub fn int(mut self, value: impl Into<Option<i64>>) -> Self {
        self.values.push(Value::Int(value.into()));
        self
    }

    /// Binds the next placeholder to a JSON document.
    #[must_use]
    pub fn json(mut self, value: &'a serde_json::Value) -> Self {
        self.values.push(Value::Json(value));
        self
    }
}

/// The statement for SQLite: ids as hyphenated text, JSON as text.
pub(crate) fn bind_sqlite<'q>(statement: &'q Statement<'_>) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    statement.values.iter().fold(sqlx::query(statement.sql), |query, value| match *value {
        Value::Id(id) => query.bind(id.hyphenated().to_string()),
        Value::Text(text) => query.bind(text),
        Value::Int(int) => query.bind(int),
        Value::Json(json) => query.bind(json.to_string()),
    })
}

/// The statement for PostgreSQL: ids as `uuid`, JSON as `jsonb`.
pub(crate) fn bind_postgres<'q>(statement: &'q Statement<'_>) -> Query<'q, Postgres, PgArguments> {
    statement.values.iter().fold(sqlx::query(statement.sql), |query, value| match *value {
        Value::Id(id) => query.bind(id),
        Value::Text(text) => query.bind(text),
        Value::Int(int) => query.bind(int),
        Value::Json(json) => query.bind(sqlx::types::Json(json)),
    })
}

/// Binds the statement's values to a rusqlite statement prepared from its
/// SQL, as [`bind_sqlite`] does for sqlx: each `$N` placeholder by its number.
pub(crate) fn bind_rusqlite(statement: &Statement<'_>, prepared: &mut rusqlite::Statement<'_>) -> rusqlite::Result<()> {
    for index in 1..=prepared.parameter_count() {
        let number = prepared
            .parameter_name(index)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|number| number.parse::<usize>().ok())
            .unwrap_or(index);
        let value = statement.values.get(number - 1).copied();
        match value {
            Some(Value::Id(id)) => prepared.raw_bind_parameter(index, id.hyphenated().to_string())?,
            Some(Value::Text(text)) => prepared.raw_bind_parameter(index, text)?,
            Some(Value::Int(int)) => prepared.raw_bind_parameter(index, int)?,
            Some(Value::Json(json)) => prepared.raw_bind_parameter(index, json.to_string())?,
            // Unbound, as sqlx leaves it: NULL.
            None => prepared.raw_bind_parameter(index, rusqlite::types::Null)?,
        }
    }
    Ok(())
}

impl Statement<'_> {
    /// The SQL text.
    pub(crate) fn sql(&self) -> &'static str {
        self.sql
    }
}
