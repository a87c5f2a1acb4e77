//! Applies `migrations/sqlite` over rusqlite, keeping sqlx's bookkeeping table (`_sqlx_migrations`), so a
//! database created by an earlier version (migrated by sqlx) and one created now are the same: the same rows,
//! the same checksums, and either can be opened by the other.
//!
//! Everything runs inside one `BEGIN IMMEDIATE` transaction: replicas sharing a file often start together, and
//! SQLite's write lock makes a second process wait out the first and then find the migrations applied.

use std::collections::HashMap;

use rusqlite::{Connection, TransactionBehavior, params};
use sqlx::migrate::MigrateError;

use super::super::StoreError;

const TABLE: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
)";

/// Applies the migrations `connection`'s database lacks.
///
/// Fails like sqlx's migrator: on a migration left half-applied (dirty), one applied with different SQL than
/// this binary's (checksum mismatch), or one applied that this binary does not know.
pub(super) fn run(connection: &mut Connection) -> Result<(), StoreError> {
    let migrator = sqlx::migrate!("./migrations/sqlite");
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(TABLE)?;
    let mut applied = HashMap::new();
    {
        let mut statement = tx.prepare("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let (version, checksum, success): (i64, Vec<u8>, bool) = (row.get(0)?, row.get(1)?, row.get(2)?);
            if !success {
                return Err(MigrateError::Dirty(version).into());
            }
            applied.insert(version, checksum);
        }
    }
    for &version in applied.keys() {
        if !migrator.iter().any(|m| m.version == version) {
            return Err(MigrateError::VersionMissing(version).into());
        }
    }
    for migration in migrator.iter().filter(|m| !m.migration_type.is_down_migration()) {
        match applied.get(&migration.version) {
            Some(checksum) if checksum[..] == migration.checksum[..] => {}
            Some(_) => return Err(MigrateError::VersionMismatch(migration.version).into()),
            None => {
                let started = std::time::Instant::now();
                tx.execute_batch(migration.sql.as_str())?;
                tx.execute(
                    "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                     VALUES (?1, ?2, TRUE, ?3, ?4)",
                    params![
                        migration.version,
                        migration.description.as_ref(),
                        migration.checksum.as_ref(),
                        i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX)
                    ],
                )?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}
