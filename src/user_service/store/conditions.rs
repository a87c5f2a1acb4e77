//! AIP-160 filters as SQL conditions on `users`, for either backend.
//!
//! The conditions are the same on both; only the spelling of "substring of" and "array holds" differs, and
//! sqlx's `QueryBuilder` writes each backend's placeholders (`?` or `$n`). Values from requests are always
//! bound, never spliced into the SQL.

use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::user_service::filter::{Condition, Filter};

/// Which SQL the conditions are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The function giving the 1-based position of a substring (0 when absent); both take (text, part).
    fn position_function(self) -> &'static str {
        match self {
            Self::Sqlite => "instr",
            Self::Postgres => "strpos",
        }
    }

    /// The JSON array in `roles` holds the bound value: the SQL before and after the bound value.
    fn has_role(self) -> [&'static str; 2] {
        match self {
            Self::Sqlite => ["EXISTS (SELECT 1 FROM json_each(users.roles) WHERE json_each.value = ", ")"],
            Self::Postgres => ["users.roles::jsonb @> jsonb_build_array(", "::text)"],
        }
    }
}

/// Appends ` AND …` for every condition of `filter`.
pub(super) fn push_conditions<DB>(query: &mut QueryBuilder<DB>, filter: &Filter, dialect: Dialect)
where
    DB: Database,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    for condition in filter.conditions() {
        query.push(" AND ");
        match condition {
            Condition::StatusEq(status) => query.push("status = ").push_bind(*status as i64),
            Condition::StatusNe(status) => query.push("status != ").push_bind(*status as i64),
            Condition::NameEq(name) => query.push("name = ").push_bind(name.clone()),
            Condition::NameNe(name) => query.push("name != ").push_bind(name.clone()),
            Condition::NameContains(part) => contains(query, dialect, "name_folded", part),
            Condition::EmailEq(email) => query.push("email_folded = ").push_bind(email.clone()),
            Condition::EmailNe(email) => query.push("email_folded != ").push_bind(email.clone()),
            Condition::EmailContains(part) => contains(query, dialect, "email_folded", part),
            Condition::HasRole(role) => around(query, dialect.has_role(), role),
        };
    }
}

fn contains<'a, DB>(
    query: &'a mut QueryBuilder<DB>,
    dialect: Dialect,
    column: &str,
    part: &str,
) -> &'a mut QueryBuilder<DB>
where
    DB: Database,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    query.push(dialect.position_function()).push("(").push(column).push(", ");
    query.push_bind(part.to_owned()).push(") > 0")
}

fn around<'a, DB>(query: &'a mut QueryBuilder<DB>, [before, after]: [&str; 2], value: &str) -> &'a mut QueryBuilder<DB>
where
    DB: Database,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    query.push(before).push_bind(value.to_owned()).push(after)
}
