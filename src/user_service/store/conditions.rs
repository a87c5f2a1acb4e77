//! AIP-160 filters as SQL conditions on `users`, for either backend.
//!
//! The conditions are the same on both; only the spelling of "substring of" and "array holds" differs, and
//! each backend's query writer ([`SqlWriter`]) writes its own placeholders (`?` or `$n`). Values from requests
//! are always bound, never spliced into the SQL.

use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::user_service::filter::{Condition, Filter};

/// A query being written: SQL text and bound values.
pub(super) trait SqlWriter {
    fn push(&mut self, sql: &str) -> &mut Self;
    fn push_int(&mut self, value: i64) -> &mut Self;
    fn push_text(&mut self, value: String) -> &mut Self;
}

impl<DB> SqlWriter for QueryBuilder<DB>
where
    DB: Database,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    fn push(&mut self, sql: &str) -> &mut Self {
        QueryBuilder::push(self, sql)
    }
    fn push_int(&mut self, value: i64) -> &mut Self {
        self.push_bind(value)
    }
    fn push_text(&mut self, value: String) -> &mut Self {
        self.push_bind(value)
    }
}

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
pub(super) fn push_conditions(query: &mut impl SqlWriter, filter: &Filter, dialect: Dialect) {
    for condition in filter.conditions() {
        query.push(" AND ");
        match condition {
            Condition::StatusEq(status) => query.push("status = ").push_int(*status as i64),
            Condition::StatusNe(status) => query.push("status != ").push_int(*status as i64),
            Condition::NameEq(name) => query.push("name = ").push_text(name.clone()),
            Condition::NameNe(name) => query.push("name != ").push_text(name.clone()),
            Condition::NameContains(part) => contains(query, dialect, "name_folded", part),
            Condition::EmailEq(email) => query.push("email_folded = ").push_text(email.clone()),
            Condition::EmailNe(email) => query.push("email_folded != ").push_text(email.clone()),
            Condition::EmailContains(part) => contains(query, dialect, "email_folded", part),
            Condition::HasRole(role) => around(query, dialect.has_role(), role),
        };
    }
}

fn contains<'a, W: SqlWriter>(query: &'a mut W, dialect: Dialect, column: &str, part: &str) -> &'a mut W {
    query.push(dialect.position_function()).push("(").push(column).push(", ");
    query.push_text(part.to_owned()).push(") > 0")
}

fn around<'a, W: SqlWriter>(query: &'a mut W, [before, after]: [&str; 2], value: &str) -> &'a mut W {
    query.push(before).push_text(value.to_owned()).push(after)
}

#[cfg(test)]
mod tests {
    use sqlx::{Postgres, QueryBuilder};

    use super::{Dialect, push_conditions};
    use crate::user_service::filter::Filter;
    use crate::user_service::store::sqlite::SqliteQuery;

    #[test]
    fn each_condition_in_each_dialect() -> Result<(), crate::user_service::filter::FilterError> {
        let cases = [
            ("", "", ""),
            ("status = ACTIVE", " AND status = ?", " AND status = $1"),
            ("status != SUSPENDED", " AND status != ?", " AND status != $1"),
            ("name = Ada", " AND name = ?", " AND name = $1"),
            ("name != Ada", " AND name != ?", " AND name != $1"),
            ("name:ada", " AND instr(name_folded, ?) > 0", " AND strpos(name_folded, $1) > 0"),
            ("email = a@b.c", " AND email_folded = ?", " AND email_folded = $1"),
            ("email != a@b.c", " AND email_folded != ?", " AND email_folded != $1"),
            ("email:b.c", " AND instr(email_folded, ?) > 0", " AND strpos(email_folded, $1) > 0"),
            (
                "roles:admin",
                " AND EXISTS (SELECT 1 FROM json_each(users.roles) WHERE json_each.value = ?)",
                " AND users.roles::jsonb @> jsonb_build_array($1::text)",
            ),
            (
                "status = ACTIVE AND roles:admin AND email:\"'; DROP TABLE users; --\"",
                " AND status = ? AND EXISTS (SELECT 1 FROM json_each(users.roles) WHERE json_each.value = ?) \
                 AND instr(email_folded, ?) > 0",
                " AND status = $1 AND users.roles::jsonb @> jsonb_build_array($2::text) AND strpos(email_folded, $3) > 0",
            ),
        ];
        for (filter, sqlite, postgres) in cases {
            let filter = Filter::parse(filter)?;
            let mut query = SqliteQuery::new("");
            push_conditions(&mut query, &filter, Dialect::Sqlite);
            assert_eq!(query.sql(), sqlite);
            let mut query = QueryBuilder::<Postgres>::new("");
            push_conditions(&mut query, &filter, Dialect::Postgres);
            assert_eq!(query.into_string(), postgres);
        }
        Ok(())
    }
}
