//! Reading a column as the type the core means, on each database: the one
//! place that knows how each schema stores ids and JSON.

use serde::de::DeserializeOwned;
use smartscheduler_domain::ports::StoreError;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use crate::errors::{corrupt, store_error};

/// A column of a row, read by name as the type the core means.
pub trait Columns {
    /// An id (`uuid` on PostgreSQL, text on SQLite).
    fn uuid(&self, column: &str) -> Result<Uuid, StoreError>;
    /// An id or NULL.
    fn optional_uuid(&self, column: &str) -> Result<Option<Uuid>, StoreError>;
    /// Text.
    fn text(&self, column: &str) -> Result<&str, StoreError>;
    /// Text or NULL.
    fn optional_text(&self, column: &str) -> Result<Option<&str>, StoreError>;
    /// An integer.
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    /// An integer or NULL.
    fn optional_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
    /// A JSON document (`jsonb` on PostgreSQL, text on SQLite), parsed.
    fn json<T: DeserializeOwned>(&self, column: &str) -> Result<T, StoreError>;
}

/// SQLite keeps ids as hyphenated text and JSON as text.
impl Columns for SqliteRow {
    fn uuid(&self, column: &str) -> Result<Uuid, StoreError> {
        self.text(column)?.parse().map_err(corrupt)
    }
    fn optional_uuid(&self, column: &str) -> Result<Option<Uuid>, StoreError> {
        self.optional_text(column)?.map(str::parse).transpose().map_err(corrupt)
    }
    fn text(&self, column: &str) -> Result<&str, StoreError> {
        self.try_get(column).map_err(store_error)
    }
    fn optional_text(&self, column: &str) -> Result<Option<&str>, StoreError> {
        self.try_get(column).map_err(store_error)
    }
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        self.try_get(column).map_err(store_error)
    }
    fn optional_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        self.try_get(column).map_err(store_error)
    }
    fn json<T: DeserializeOwned>(&self, column: &str) -> Result<T, StoreError> {
        serde_json::from_str(self.text(column)?).map_err(corrupt)
    }
}

/// PostgreSQL keeps ids as `uuid` and JSON as `jsonb`.
impl Columns for PgRow {
    fn uuid(&self, column: &str) -> Result<Uuid, StoreError> {
        self.try_get(column).map_err(store_error)
    }
    fn optional_uuid(&self, column: &str) -> Result<Option<Uuid>, StoreError> {
        self.try_get(column).map_err(store_error)
    }
    fn text(&self, column: &str) -> Result<&str, StoreError> {
        self.try_get(column).map_err(store_error)
    }
    fn optional_text(&self, column: &str) -> Result<Option<&str>, StoreError> {
        self.try_get(column).map_err(store_error)
    }
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        self.try_get(column).map_err(store_error)
    }
    fn optional_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        self.try_get(column).map_err(store_error)
    }
    fn json<T: DeserializeOwned>(&self, column: &str) -> Result<T, StoreError> {
        let sqlx::types::Json(value) = self.try_get(column).map_err(store_error)?;
        Ok(value)
    }
}
