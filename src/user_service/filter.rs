//! The filter language of `ListUsers` and `WatchUsers`: a subset of AIP-160
//! (<https://google.aip.dev/160>).
//!
//! ```text
//! filter := [ term { "AND" term } ]     "AND" is upper-case; whitespace separates tokens
//! term   := field op value              spaces around op are optional: name="Ada", name = "Ada"
//! field  := "status" | "name" | "email" | "roles"
//! op     := "=" | "!=" | ":"            ":" means contains (name, email) or has (roles)
//! value  := bare | quoted
//! bare   := one or more chars except whitespace and " ( ) = ! :    e.g. ada@example.com
//! quoted := '"' { any char except '"' and '\' | '\"' | '\\' } '"'
//! ```
//!
//! - `status = | != VALUE`: VALUE is `ACTIVE`, `INACTIVE` or `SUSPENDED` in any
//!   case, or a full name such as `USER_STATUS_ACTIVE`.
//! - `name = | != VALUE`: exact and case-sensitive; `name:VALUE` is a
//!   case-insensitive substring match.
//! - `email = | != | : VALUE`: case-insensitive equality or substring match.
//! - `roles:VALUE`: the user has exactly that role.
//!
//! An empty filter matches every user. `OR`, `NOT`, `-` negation, parentheses
//! and `<`/`>` comparisons are not supported. Quote a value that contains
//! whitespace or `" ( ) = ! :`, or that is the word `AND`. Values may be empty
//! (`name = ""`) except after `:`. A filter has at most 2048 bytes and 32 terms.
//! Errors report the 1-based character column of the offending token.
//!
//! Example: `status = ACTIVE AND roles:admin AND email:"@example.com"`.

use crate::proto::user::{User, UserStatus};

const MAX_INPUT_BYTES: usize = 2048;
const MAX_TERMS: usize = 32;
const FIELDS: &str = "status, name, email, roles";
const STATUS_PREFIX: &str = "USER_STATUS_";
// Spelled out because prost offers no way to list the variants; only the hint
// in errors uses it. UNSPECIFIED is left out: it is never stored.
const STATUSES: [UserStatus; 3] = [UserStatus::Active, UserStatus::Inactive, UserStatus::Suspended];

/// Case folding used for case-insensitive comparisons; the store also uses it
/// for its folded columns, so in-memory and SQL matching agree.
pub fn fold(s: &str) -> String {
    s.to_lowercase()
}

/// One `field op value` term. Values of the case-insensitive conditions are
/// stored already [`fold`]ed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    StatusEq(UserStatus),
    StatusNe(UserStatus),
    /// Exact, case-sensitive.
    NameEq(String),
    NameNe(String),
    /// Folded; case-insensitive substring.
    NameContains(String),
    /// Folded; case-insensitive equality.
    EmailEq(String),
    EmailNe(String),
    /// Folded; case-insensitive substring.
    EmailContains(String),
    /// Exact element match in `roles`.
    HasRole(String),
}

impl Condition {
    fn matches(&self, user: &User) -> bool {
        match self {
            Condition::StatusEq(s) => user.status == *s as i32,
            Condition::StatusNe(s) => user.status != *s as i32,
            Condition::NameEq(v) => user.name == *v,
            Condition::NameNe(v) => user.name != *v,
            Condition::NameContains(v) => fold(&user.name).contains(v.as_str()),
            Condition::EmailEq(v) => fold(&user.email) == *v,
            Condition::EmailNe(v) => fold(&user.email) != *v,
            Condition::EmailContains(v) => fold(&user.email).contains(v.as_str()),
            Condition::HasRole(v) => user.roles.iter().any(|r| r == v),
        }
    }
}

/// A parsed filter: the conjunction of its conditions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter {
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter at position {position}: {message}")]
pub struct FilterError {
    /// 1-based character column of the problem.
    pub position: usize,
    pub message: String,
}

fn err(position: usize, message: String) -> FilterError {
    FilterError { position, message }
}

/// `return Err(..)` with a formatted message, to keep the many error exits short.
macro_rules! fail {
    ($pos:expr, $($fmt:tt)+) => {
        return Err(err($pos, format!($($fmt)+)))
    };
}

impl Filter {
    /// Parses a filter; an empty or whitespace-only string matches all users.
    pub fn parse(input: &str) -> Result<Filter, FilterError> {
        if input.len() > MAX_INPUT_BYTES {
            let fitting = input.char_indices().take_while(|&(i, c)| i + c.len_utf8() <= MAX_INPUT_BYTES).count();
            fail!(fitting + 1, "filter is {} bytes; the limit is {MAX_INPUT_BYTES}", input.len());
        }
        let mut lexer = Lexer { chars: input.chars().collect(), i: 0 };
        let mut conditions = Vec::new();
        let Some(mut first) = lexer.next()? else {
            return Ok(Filter::default());
        };
        loop {
            if conditions.len() == MAX_TERMS {
                fail!(first.0, "too many terms; at most {MAX_TERMS} are allowed");
            }
            conditions.push(parse_term(&mut lexer, first)?);
            first = match lexer.next()? {
                None => return Ok(Filter { conditions }),
                Some((pos, Tok::Word(w))) if w == "AND" => match lexer.next()? {
                    Some(t) => t,
                    None => fail!(pos, "trailing AND; expected a term after it"),
                },
                Some(t) => return Err(unsupported(&t).unwrap_or_else(|| between_terms(t))),
            };
        }
    }

    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// True if the user satisfies every condition.
    pub fn matches(&self, user: &User) -> bool {
        self.conditions.iter().all(|c| c.matches(user))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Has,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Has => ":",
        }
    }
}

#[derive(Debug)]
enum Tok {
    Word(String),
    Quoted(String),
    Op(Op),
    /// `(`, `)`, or a `!` not followed by `=`.
    Punct(char),
}

/// A token and its 1-based character column.
type Token = (usize, Tok);

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Word(w) => format!("\"{w}\""),
        Tok::Quoted(_) => "a quoted value".to_string(),
        Tok::Op(op) => format!("\"{}\"", op.symbol()),
        Tok::Punct(c) => format!("\"{c}\""),
    }
}

/// Recognises AIP-160 syntax outside the supported subset, so that users learn
/// it is unsupported instead of getting a generic syntax error.
fn unsupported((pos, tok): &Token) -> Option<FilterError> {
    let only_and = "only terms joined by AND are supported";
    let exclude = "use != to exclude a value";
    let message = match tok {
        Tok::Punct('(' | ')') => format!("parentheses are not supported; {only_and}"),
        Tok::Punct('!') => format!("\"!\" negation is not supported; {exclude}"),
        Tok::Word(w) if w.eq_ignore_ascii_case("OR") => format!("OR is not supported; {only_and}"),
        Tok::Word(w) if w.eq_ignore_ascii_case("NOT") => format!("NOT is not supported; {exclude}"),
        Tok::Word(w) if w.starts_with('-') => format!("\"-\" negation is not supported; {exclude}"),
        Tok::Word(w) if w.contains(['<', '>']) => {
            "comparisons (<, <=, >, >=) are not supported; use =, != or :".to_string()
        }
        _ => return None,
    };
    Some(err(*pos, message))
}

fn between_terms((pos, tok): Token) -> FilterError {
    let message = match tok {
        Tok::Word(w) if w.eq_ignore_ascii_case("AND") => {
            "expected AND between terms; AND must be upper-case".to_string()
        }
        Tok::Op(op) => format!("unexpected \"{}\" after a value; quote values that contain = ! : ( or )", op.symbol()),
        tok => format!("expected AND between terms, found {}", describe(&tok)),
    };
    err(pos, message)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Status,
    Name,
    Email,
    Roles,
}

fn parse_term(lexer: &mut Lexer, first: Token) -> Result<Condition, FilterError> {
    if let Some(e) = unsupported(&first) {
        return Err(e);
    }
    let (field, name) = match first {
        (_, Tok::Word(w)) if w == "status" => (Field::Status, w),
        (_, Tok::Word(w)) if w == "name" => (Field::Name, w),
        (_, Tok::Word(w)) if w == "email" => (Field::Email, w),
        (_, Tok::Word(w)) if w == "roles" => (Field::Roles, w),
        (pos, Tok::Word(w)) if w.eq_ignore_ascii_case("AND") => {
            fail!(pos, "expected a term, found {w}")
        }
        (pos, Tok::Word(w)) => fail!(pos, "unknown field \"{w}\"; filterable fields are {FIELDS}"),
        (pos, Tok::Op(op)) => fail!(pos, "missing field before \"{}\"", op.symbol()),
        (pos, tok) => fail!(pos, "expected a field ({FIELDS}), found {}", describe(&tok)),
    };

    let (op_pos, op) = match lexer.next()? {
        Some((pos, Tok::Op(op))) => (pos, op),
        Some((pos, tok)) => {
            fail!(pos, "expected an operator (=, != or :) after {name}, found {}", describe(&tok))
        }
        None => fail!(lexer.end_pos(), "missing operator after {name}; expected =, != or :"),
    };
    // Choosing how to build the condition before reading the value lets an
    // operator error point at the operator even when the value is also bad.
    let build: fn(String) -> Result<Condition, String> = match (field, op) {
        (Field::Status, Op::Eq) => |v| parse_status(&v).map(Condition::StatusEq),
        (Field::Status, Op::Ne) => |v| parse_status(&v).map(Condition::StatusNe),
        (Field::Status, Op::Has) => fail!(op_pos, "operator \":\" is not supported on status; use = or !="),
        (Field::Name, Op::Eq) => |v| Ok(Condition::NameEq(v)),
        (Field::Name, Op::Ne) => |v| Ok(Condition::NameNe(v)),
        (Field::Name, Op::Has) => |v| Ok(Condition::NameContains(fold(&v))),
        (Field::Email, Op::Eq) => |v| Ok(Condition::EmailEq(fold(&v))),
        (Field::Email, Op::Ne) => |v| Ok(Condition::EmailNe(fold(&v))),
        (Field::Email, Op::Has) => |v| Ok(Condition::EmailContains(fold(&v))),
        (Field::Roles, Op::Has) => |v| Ok(Condition::HasRole(v)),
        (Field::Roles, _) => fail!(op_pos, "roles supports only \":\" (has), e.g. roles:admin"),
    };

    let sym = op.symbol();
    let (pos, value) = match lexer.next()? {
        // A bare AND right after an operator almost always means a forgotten value.
        Some((pos, Tok::Word(w))) if w == "AND" => {
            fail!(pos, "missing value after \"{sym}\"; to match the word AND, quote it")
        }
        Some((pos, Tok::Word(v) | Tok::Quoted(v))) => (pos, v),
        Some(t) => match unsupported(&t) {
            Some(e) => return Err(e),
            None => fail!(t.0, "expected a value after \"{sym}\", found {}", describe(&t.1)),
        },
        None => fail!(lexer.end_pos(), "missing value after \"{sym}\""),
    };
    if op == Op::Has && value.is_empty() {
        fail!(pos, "empty value is not allowed with \":\"");
    }
    build(value).map_err(|message| err(pos, message))
}

fn parse_status(value: &str) -> Result<UserStatus, String> {
    let full = match value.starts_with(STATUS_PREFIX) {
        true => value.to_string(),
        false => format!("{STATUS_PREFIX}{}", value.to_ascii_uppercase()),
    };
    match UserStatus::from_str_name(&full) {
        Some(status) if status != UserStatus::Unspecified => Ok(status),
        found => {
            let problem = match found {
                Some(_) => format!("status \"{value}\" is never stored"),
                None => format!("unknown status \"{value}\""),
            };
            let valid: Vec<&str> = STATUSES.iter().map(|s| s.as_str_name().trim_start_matches(STATUS_PREFIX)).collect();
            let valid = valid.join(", ");
            Err(format!("{problem}; valid values are {valid}, or full names like USER_STATUS_ACTIVE"))
        }
    }
}

struct Lexer {
    chars: Vec<char>,
    /// 0-based index of the next char, so the column of that char is `i + 1`.
    i: usize,
}

impl Lexer {
    fn end_pos(&self) -> usize {
        self.chars.len() + 1
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn next(&mut self) -> Result<Option<Token>, FilterError> {
        while self.peek().is_some_and(char::is_whitespace) {
            self.i += 1;
        }
        let start = self.i;
        let Some(c) = self.peek() else {
            return Ok(None);
        };
        self.i += 1;
        let tok = match c {
            '=' => Tok::Op(Op::Eq),
            ':' => Tok::Op(Op::Has),
            '!' if self.peek() == Some('=') => {
                self.i += 1;
                Tok::Op(Op::Ne)
            }
            '!' | '(' | ')' => Tok::Punct(c),
            '"' => Tok::Quoted(self.quoted(start + 1)?),
            _ => {
                let bare = |c: char| !c.is_whitespace() && !"\"()=!:".contains(c);
                while self.peek().is_some_and(bare) {
                    self.i += 1;
                }
                Tok::Word(self.chars[start..self.i].iter().collect())
            }
        };
        Ok(Some((start + 1, tok)))
    }

    /// Reads the rest of a quoted value whose opening quote is at column `open`.
    fn quoted(&mut self, open: usize) -> Result<String, FilterError> {
        let mut value = String::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match (c, self.peek()) {
                ('"', _) => return Ok(value),
                ('\\', Some(e @ ('"' | '\\'))) => {
                    self.i += 1;
                    value.push(e);
                }
                ('\\', Some(e)) => {
                    // The backslash's 1-based column is self.i, the index of the char after it.
                    fail!(self.i, "unknown escape \"\\{e}\"; only \\\" and \\\\ are allowed in quoted values")
                }
                ('\\', None) => break,
                _ => value.push(c),
            }
        }
        fail!(open, "unterminated quoted value; add a closing \"")
    }
}

#[cfg(test)]
mod tests {
    use super::Condition::*;
    use super::*;
    use crate::proto::user::UserStatus::*;

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn parses_valid_filters() {
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<Condition>)> = vec![
            ("", vec![]),
            (" \t\n ", vec![]),
            ("name=Ada", vec![NameEq(s("Ada"))]),
            ("  name  =  \"Ada Lovelace\"  ", vec![NameEq(s("Ada Lovelace"))]),
            ("name!=\"\"", vec![NameNe(s(""))]),
            ("name = \"\"", vec![NameEq(s(""))]),
            ("name:ÅD", vec![NameContains(s("åd"))]),
            (r#"name = "say \"hi\" \\o/""#, vec![NameEq(s(r#"say "hi" \o/"#))]),
            (r#"name = "a (b)=c!d:e""#, vec![NameEq(s("a (b)=c!d:e"))]),
            (r#"name = "AND""#, vec![NameEq(s("AND"))]),
            ("name = -x", vec![NameEq(s("-x"))]),
            ("email = Ada@Example.COM", vec![EmailEq(s("ada@example.com"))]),
            ("email != a+b_c@x-y.io", vec![EmailNe(s("a+b_c@x-y.io"))]),
            ("email:@EXAMPLE.com", vec![EmailContains(s("@example.com"))]),
            ("roles:admin", vec![HasRole(s("admin"))]),
            ("roles : \"Super Admin\"", vec![HasRole(s("Super Admin"))]),
            ("status = ACTIVE", vec![StatusEq(Active)]),
            ("status=suspended", vec![StatusEq(Suspended)]),
            ("status != USER_STATUS_INACTIVE", vec![StatusNe(Inactive)]),
            ("status = \"Inactive\"", vec![StatusEq(Inactive)]),
            ("name=\"x\"AND roles:y", vec![NameEq(s("x")), HasRole(s("y"))]),
            (
                "status = ACTIVE AND roles:admin AND email:EXAMPLE.com AND name != Bob",
                vec![
                    StatusEq(Active), HasRole(s("admin")), EmailContains(s("example.com")),
                    NameNe(s("Bob")),
                ],
            ),
        ];
        for (input, expected) in cases {
            match Filter::parse(input) {
                Ok(f) => {
                    assert_eq!(f.conditions(), expected.as_slice(), "input {input:?}");
                    assert_eq!(f.is_empty(), expected.is_empty(), "input {input:?}");
                }
                Err(e) => panic!("input {input:?}: unexpected error {e}"),
            }
        }
    }

    #[test]
    fn reports_errors_with_position() {
        #[rustfmt::skip]
        let cases: Vec<(&str, usize, &str)> = vec![
            ("nme = x", 1, r#"unknown field "nme"; filterable fields are"#),
            ("Name = x", 1, r#"fields are status, name, email, roles"#),
            ("status:ACTIVE", 7, r#"operator ":" is not supported on status; use = or !="#),
            ("roles = admin", 7, r#"roles supports only ":" (has), e.g. roles:admin"#),
            ("roles != admin", 7, "roles supports only"),
            ("name = a OR name = b", 10, "OR is not supported; only terms joined by AND"),
            ("NOT name = a", 1, "NOT is not supported"),
            ("-name = a", 1, r#""-" negation is not supported"#),
            ("!name = a", 1, r#""!" negation is not supported"#),
            ("(name = a)", 1, "parentheses are not supported"),
            ("name = a AND (roles:b)", 14, "parentheses are not supported"),
            ("name = (a)", 8, "parentheses are not supported"),
            ("status>=ACTIVE", 1, "comparisons (<, <=, >, >=) are not supported"),
            ("status > ACTIVE", 8, r#"expected an operator (=, != or :) after status, found ">""#),
            ("name = a and roles:b", 10, "expected AND between terms; AND must be upper-case"),
            ("name = a roles:b", 10, r#"expected AND between terms, found "roles""#),
            ("name = Ada Lovelace", 12, r#"expected AND between terms, found "Lovelace""#),
            ("name = a=b", 9, r#"unexpected "=" after a value; quote values"#),
            ("name", 5, "missing operator after name; expected =, != or :"),
            ("name Ada", 6, r#"expected an operator (=, != or :) after name, found "Ada""#),
            ("= Ada", 1, r#"missing field before "=""#),
            ("\"name\" = Ada", 1, "expected a field (status, name, email, roles), found a quoted"),
            ("name =  ", 9, r#"missing value after "=""#),
            ("name = AND roles:a", 8, r#"missing value after "="; to match the word AND, quote"#),
            ("name == a", 7, r#"expected a value after "=", found "=""#),
            ("name = a AND", 10, "trailing AND; expected a term after it"),
            ("name = a AND AND roles:x", 14, "expected a term, found AND"),
            ("name = \"Ada", 8, "unterminated quoted value"),
            ("name = \"Ada\\", 8, "unterminated quoted value"),
            (r#"name = "a\nb""#, 10, r#"unknown escape "\n"; only \" and \\ are allowed"#),
            (r#"Ådne = "\t""#, 1, r#"unknown field "Ådne""#),
            (r#"name = "Å\t""#, 10, r#"unknown escape "\t""#),
            ("name: \"\"", 7, r#"empty value is not allowed with ":""#),
            ("roles:\"\"", 7, "empty value is not allowed"),
            ("status=x", 8, r#"unknown status "x"; valid values are ACTIVE, INACTIVE, SUSPENDED"#),
            ("status = user_status_active", 10, "unknown status"),
            ("status = \"\"", 10, r#"unknown status """#),
            ("status!=unspecified", 9, r#"status "unspecified" is never stored; valid values"#),
            ("status = USER_STATUS_UNSPECIFIED", 10, "is never stored"),
        ];
        for (input, position, message) in cases {
            match Filter::parse(input) {
                Ok(f) => panic!("input {input:?}: expected an error, got {f:?}"),
                Err(e) => {
                    assert_eq!(e.position, position, "input {input:?}: {e}");
                    assert!(e.message.contains(message), "input {input:?}: {e}");
                }
            }
        }
    }

    #[test]
    fn enforces_limits_and_formats_errors() {
        let terms = |n: usize| vec!["roles:a"; n].join(" AND ");
        assert!(Filter::parse(&terms(MAX_TERMS)).is_ok_and(|f| f.conditions().len() == MAX_TERMS));
        let e = Filter::parse(&terms(MAX_TERMS + 1)).expect_err("33 terms");
        // The 33rd term follows 32 terms of 7 chars and 32 separators of 5.
        assert_eq!((e.position, e.message.as_str()), (32 * 12 + 1, "too many terms; at most 32 are allowed"));

        let long = format!("name = \"{}\"", "x".repeat(MAX_INPUT_BYTES - 9));
        assert!(long.len() == MAX_INPUT_BYTES && Filter::parse(&long).is_ok());
        let e = Filter::parse(&format!("name:{}", "é".repeat(MAX_INPUT_BYTES))).expect_err("too long");
        // 5 ASCII chars then 2-byte chars, of which 1021 fit in 2048 bytes.
        assert_eq!(e.to_string(), "invalid filter at position 1027: filter is 4101 bytes; the limit is 2048");
    }

    #[test]
    fn matches_users() {
        let user = |name: &str, email: &str, roles: &[&str], status: UserStatus| User {
            name: s(name),
            email: s(email),
            roles: roles.iter().map(|r| s(r)).collect(),
            status: status as i32,
            ..Default::default()
        };
        let ada = user("Ada Lovelace", "Ada@Example.com", &["admin", "dev"], Active);
        let adne = user("Ådne", "ÅDNE@example.no", &[], Suspended);
        #[rustfmt::skip]
        let cases: Vec<(&str, &User, bool)> = vec![
            ("", &ada, true),
            ("name = \"Ada Lovelace\"", &ada, true),
            ("name = \"ada lovelace\"", &ada, false),
            ("name != \"Ada Lovelace\"", &ada, false),
            ("name != Ada", &ada, true),
            ("name:LOVE", &ada, true),
            ("name:\"åd\"", &adne, true),
            ("name:ÅDNE", &adne, true),
            ("name:ad", &adne, false),
            ("email = ada@example.COM", &ada, true),
            ("email != ada@example.com", &ada, false),
            ("email:\"ådne@\"", &adne, true),
            ("email:.no", &ada, false),
            ("roles:admin", &ada, true),
            ("roles:Admin", &ada, false),
            ("roles:adm", &ada, false),
            ("roles:admin", &adne, false),
            ("status = active", &ada, true),
            ("status != ACTIVE", &ada, false),
            ("status = SUSPENDED", &adne, true),
            ("status = ACTIVE AND roles:dev AND email:example", &ada, true),
            ("status = ACTIVE AND roles:ops", &ada, false),
        ];
        for (input, u, expected) in cases {
            match Filter::parse(input) {
                Ok(f) => assert_eq!(f.matches(u), expected, "filter {input:?} on {:?}", u.name),
                Err(e) => panic!("input {input:?}: unexpected error {e}"),
            }
        }
    }
}

/// Property tests: the parser never panics, its error positions point inside the input, and generated valid
/// filters parse into one condition per term.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::Filter;

    fn term() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9 ]{0,8}".prop_map(|v| format!("name = \"{}\"", v.replace('"', ""))),
            "[a-z0-9@.]{1,12}".prop_map(|v| format!("email:\"{v}\"")),
            "[a-z]{1,8}".prop_map(|v| format!("roles:{v}")),
            prop_oneof![Just("ACTIVE"), Just("INACTIVE"), Just("SUSPENDED")].prop_map(|v| format!("status = {v}")),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics_and_errors_point_inside_it(input in "\\PC{0,40}") {
            if let Err(error) = Filter::parse(&input) {
                prop_assert!(error.position <= input.chars().count() + 1, "{} for {:?}", error.position, input);
            }
        }

        #[test]
        fn generated_filters_parse_term_by_term(terms in prop::collection::vec(term(), 1..6)) {
            let text = terms.join(" AND ");
            let filter = Filter::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(filter.conditions().len(), terms.len(), "{}", text);
        }
    }
}
