//! The service's typed errors and their one mapping to gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::user_service::filter::FilterError;
use crate::user_service::page_token::PageTokenError;
use crate::user_service::password::HashError;
use crate::user_service::store::StoreError;
use crate::user_service::validate::Violation;

/// Everything a UserService call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{message}")]
    InvalidArgument { message: String, violations: Vec<Violation> },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unavailable(String),
}

impl ServiceError {
    /// INVALID_ARGUMENT carrying the violations as google.rpc.BadRequest details.
    pub fn invalid(violations: Vec<Violation>) -> Self {
        let message =
            violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
        Self::InvalidArgument { message: format!("invalid request: {message}"), violations }
    }

    /// INVALID_ARGUMENT for one field.
    pub fn invalid_field(field: &str, description: impl Into<String>) -> Self {
        Self::invalid(vec![Violation::new(field, description)])
    }
}

impl From<FilterError> for ServiceError {
    fn from(error: FilterError) -> Self {
        Self::invalid_field("filter", error.to_string())
    }
}

impl From<PageTokenError> for ServiceError {
    fn from(error: PageTokenError) -> Self {
        Self::invalid_field("page_token", error.to_string())
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::InvalidArgument { message, violations } => {
                bad_request(Code::InvalidArgument, message, violations)
            }
            ServiceError::Aborted(message) => Status::aborted(message),
            ServiceError::Unavailable(message) => Status::unavailable(message),
            ServiceError::Store(store) => match store {
                StoreError::NotFound(id) => Status::not_found(format!("user {id} not found")),
                StoreError::EmailTaken { email, index } => {
                    let field = match index {
                        Some(index) => format!("requests[{index}].email"),
                        None => "user.email".to_string(),
                    };
                    let message = match index {
                        Some(index) => format!("item {index}: email {email:?} is already used by another user"),
                        None => format!("email {email:?} is already used by another user"),
                    };
                    let violation =
                        Violation::new(field, "is already used by another user (emails are case-insensitive)");
                    bad_request(Code::AlreadyExists, message, vec![violation])
                }
                StoreError::RevisionCompacted { requested, oldest } => Status::failed_precondition(format!(
                    "since_revision {requested} is older than the retained change log (oldest revision {oldest}); \
                     re-list the users and watch from the SNAPSHOT_COMPLETE revision"
                )),
                StoreError::RevisionAhead { requested, latest } => Status::failed_precondition(format!(
                    "since_revision {requested} is ahead of the latest revision {latest}; it was not issued by \
                     this database: re-list the users and watch again"
                )),
                StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed) => {
                    tracing::warn!(error = %store, "database unavailable");
                    Status::unavailable("the database is unavailable; retry later")
                }
                StoreError::Database(sqlx::Error::Database(db)) if is_busy(db.code().as_deref()) => {
                    tracing::warn!(error = %db, "database busy");
                    Status::unavailable("the database is busy; retry later")
                }
                StoreError::Sqlite(ref error) if is_sqlite_busy(error) => {
                    tracing::warn!(error = %store, "database busy");
                    Status::unavailable("the database is busy; retry later")
                }
                StoreError::Commit(ref error) if is_sqlite_busy(error) => {
                    tracing::warn!(error = %store, "database busy");
                    Status::unavailable("the database is busy; retry later")
                }
                StoreError::WriterGone => Status::unavailable("the database is closing; retry later"),
                other => internal(&other),
            },
            ServiceError::Hash(hash) => internal(&hash),
        }
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED from rusqlite.
fn is_sqlite_busy(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(failure, _)
        if matches!(failure.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

/// SQLITE_BUSY (5) and SQLITE_LOCKED (6), including their extended codes.
fn is_busy(code: Option<&str>) -> bool {
    code.and_then(|c| c.parse::<i64>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

fn bad_request(code: Code, message: String, violations: Vec<Violation>) -> Status {
    let violations: Vec<FieldViolation> =
        violations.into_iter().map(|v| FieldViolation::new(v.field, v.description)).collect();
    Status::with_error_details(code, message, ErrorDetails::with_bad_request(violations))
}

/// Internal failures are logged in full and reported without internals.
fn internal(error: &dyn std::error::Error) -> Status {
    tracing::error!(error = %error, "internal error");
    Status::internal("internal error")
}
