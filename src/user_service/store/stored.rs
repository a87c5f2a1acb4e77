//! The row model both SQL stores share: a user as stored, change-log rows, and the encodings of roles and
//! timestamps. Both schemas keep the same column names and types (roles as a JSON array in text, times as
//! nanoseconds since the epoch), so a row decodes the same way whichever database it came from.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgRow;

use super::{Change, ChangeKind, StoreError, User, UserPatch};
use crate::proto::user::UserEventType;

/// The columns of a `users` row as [`StoredUser`] reads it; a macro, so that statements can be `concat!`ed
/// into constants (prepared once, never formatted per call).
macro_rules! user_columns {
    () => {
        "id, name, email, roles, status, created_at_ns"
    };
}
/// The columns of a `user_changes` row as [`change_from_row`] reads it.
macro_rules! change_columns {
    () => {
        "revision, kind, user_id, name, email, roles, status, created_at_ns, prev_name, prev_email, prev_roles, \
         prev_status, committed_at_ns"
    };
}
pub(super) use {change_columns, user_columns};

pub(super) const USER_COLUMNS: &str = user_columns!();

/// Typed column reads, implemented for each backend's row type (sqlx's PostgreSQL rows, rusqlite's rows).
/// Naming the shapes the schema uses keeps the decoding code backend-free.
pub(super) trait Columns {
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn small(&self, column: &str) -> Result<i32, StoreError>;
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn optional_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn optional_small(&self, column: &str) -> Result<Option<i32>, StoreError>;
}

macro_rules! columns_for {
    ($row:ty, $get:expr) => {
        impl Columns for $row {
            fn int(&self, column: &str) -> Result<i64, StoreError> {
                Ok($get(self, column)?)
            }
            fn small(&self, column: &str) -> Result<i32, StoreError> {
                Ok($get(self, column)?)
            }
            fn text(&self, column: &str) -> Result<String, StoreError> {
                Ok($get(self, column)?)
            }
            fn optional_text(&self, column: &str) -> Result<Option<String>, StoreError> {
                Ok($get(self, column)?)
            }
            fn optional_small(&self, column: &str) -> Result<Option<i32>, StoreError> {
                Ok($get(self, column)?)
            }
        }
    };
}

columns_for!(PgRow, sqlx::Row::try_get);
columns_for!(rusqlite::Row<'_>, rusqlite::Row::get);

/// A user row as stored (roles still JSON), used to compare and log without re-encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StoredUser {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub roles_json: String,
    pub status: i32,
    pub created_at_ns: i64,
}

impl StoredUser {
    /// Reads a `users` row.
    pub fn from_row(row: &impl Columns) -> Result<Self, StoreError> {
        Self::from_row_with_id(row, "id")
    }

    /// Change-log rows keep the user's id in `user_id`.
    fn from_row_with_id(row: &impl Columns, id_column: &str) -> Result<Self, StoreError> {
        Ok(Self {
            id: row.int(id_column)?,
            name: row.text("name")?,
            email: row.text("email")?,
            roles_json: row.text("roles")?,
            status: row.small("status")?,
            created_at_ns: row.int("created_at_ns")?,
        })
    }

    /// This user with `patch` applied; equal to `self` when the patch changes nothing.
    pub fn patched(&self, patch: UserPatch) -> Result<Self, StoreError> {
        let mut updated = self.clone();
        if let Some(name) = patch.name {
            updated.name = name;
        }
        if let Some(email) = patch.email {
            updated.email = email;
        }
        if let Some(roles) = patch.roles {
            updated.roles_json = roles_to_json(&roles)?;
        }
        if let Some(status) = patch.status {
            updated.status = status as i32;
        }
        Ok(updated)
    }

    pub fn into_user(self) -> Result<User, StoreError> {
        Ok(User {
            id: self.id,
            name: self.name,
            email: self.email,
            roles: roles_from_json(&self.roles_json)?,
            status: self.status,
            created_at: Some(timestamp_from_nanos(self.created_at_ns)),
        })
    }
}

/// Reads a `user_changes` row.
pub(super) fn change_from_row(row: &impl Columns) -> Result<Change, StoreError> {
    let kind = row.small("kind")?;
    let kind = match UserEventType::try_from(kind) {
        Ok(UserEventType::Created) => ChangeKind::Created,
        Ok(UserEventType::Updated) => ChangeKind::Updated,
        Ok(UserEventType::Deleted) => ChangeKind::Deleted,
        _ => return Err(StoreError::Corrupt(format!("change kind {kind} is not a change"))),
    };
    let user = StoredUser::from_row_with_id(row, "user_id")?;
    let previous = match row.optional_text("prev_name")? {
        Some(name) => Some(StoredUser {
            name,
            email: row.text("prev_email")?,
            roles_json: row.text("prev_roles")?,
            status: row
                .optional_small("prev_status")?
                .ok_or_else(|| StoreError::Corrupt("an update without its previous status".into()))?,
            ..user.clone()
        }),
        None => None,
    };
    Ok(Change {
        revision: row.int("revision")?,
        kind,
        user: user.into_user()?,
        previous: previous.map(StoredUser::into_user).transpose()?,
        committed_at: timestamp_from_nanos(row.int("committed_at_ns")?),
    })
}

pub(super) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

pub(super) fn roles_to_json(roles: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(roles).map_err(|e| StoreError::Corrupt(format!("cannot encode roles: {e}")))
}

fn roles_from_json(json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("roles column {json:?}: {e}")))
}

/// Now, truncated to microseconds: the precision clients see in RFC 3339 timestamps.
pub(super) fn now_micros_as_nanos() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX / 1000) * 1000
}

pub(super) fn timestamp_from_nanos(nanos: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        // rem_euclid of 1e9 always fits in i32.
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}
