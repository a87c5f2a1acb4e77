//! Request validation. Every problem becomes a [`Violation`] naming the request field, so clients get all of
//! them at once (as google.rpc.BadRequest field violations), not one per round trip.

use crate::proto::user::{CreateUserRequest, UpdateUserRequest, UserStatus};
use crate::user_service::store::{NewUser, UserPatch};

pub const NAME_MAX_CHARS: usize = 200;
pub const EMAIL_MAX_CHARS: usize = 254;
pub const PASSWORD_MIN_CHARS: usize = 8;
/// Argon2 accepts anything, but hashing megabytes of "password" is a cheap way to burn our CPU.
pub const PASSWORD_MAX_CHARS: usize = 1024;
pub const ROLE_MAX_CHARS: usize = 64;
pub const ROLES_MAX: usize = 32;
/// The fields an UpdateUser mask may name.
pub const UPDATABLE_FIELDS: [&str; 4] = ["name", "email", "roles", "status"];
/// Output-only fields: allowed in a mask (AIP-203) and ignored.
const OUTPUT_ONLY_FIELDS: [&str; 2] = ["id", "created_at"];

/// One invalid field: its path in the request and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

/// A user id taken from a request: must be positive.
pub fn user_id(id: i64, field: &str) -> Result<i64, Violation> {
    if id > 0 { Ok(id) } else { Err(Violation::new(field, format!("must be a positive user id, got {id}"))) }
}

/// Checks a CreateUserRequest; `prefix` names it within a larger request (e.g. `requests[3].`).
pub fn create_request(request: &CreateUserRequest, prefix: &str) -> Result<(), Vec<Violation>> {
    let mut violations = Vec::new();
    let field = |name: &str| format!("{prefix}{name}");
    if let Err(description) = name(&request.name) {
        violations.push(Violation::new(field("name"), description));
    }
    if let Err(description) = email(&request.email) {
        violations.push(Violation::new(field("email"), description));
    }
    let password_chars = request.password.chars().count();
    if request.password.is_empty() {
        violations.push(Violation::new(field("password"), "is required"));
    } else if password_chars < PASSWORD_MIN_CHARS {
        violations.push(Violation::new(
            field("password"),
            format!("must be at least {PASSWORD_MIN_CHARS} characters, got {password_chars}"),
        ));
    } else if password_chars > PASSWORD_MAX_CHARS {
        violations.push(Violation::new(field("password"), format!("must be at most {PASSWORD_MAX_CHARS} characters")));
    }
    if let Err(description) = roles(&request.roles) {
        violations.push(Violation::new(field("roles"), description));
    }
    if violations.is_empty() { Ok(()) } else { Err(violations) }
}

/// The store's input for a validated request and its password hash.
pub fn new_user(request: CreateUserRequest, password_hash: String) -> NewUser {
    NewUser { name: request.name, email: request.email, roles: request.roles, password_hash }
}

/// Turns an UpdateUserRequest into the user id and the patch to apply (AIP-134 semantics).
///
/// With a non-empty `update_mask`, exactly the named fields change (`*` names them all; output-only fields
/// are ignored; any other path is a violation). Without one, the populated fields of `user` change.
pub fn update_request(request: &UpdateUserRequest) -> Result<(i64, UserPatch), Vec<Violation>> {
    let Some(user) = &request.user else {
        return Err(vec![Violation::new("user", "is required")]);
    };
    let mut violations = Vec::new();
    let id = user_id(user.id, "user.id").map_err(|v| violations.push(v)).unwrap_or_default();

    let mask: Vec<&str> =
        request.update_mask.as_ref().map(|m| m.paths.iter().map(String::as_str).collect()).unwrap_or_default();
    let selected: Vec<&str> = if mask.is_empty() {
        let mut populated = Vec::new();
        if !user.name.is_empty() {
            populated.push("name");
        }
        if !user.email.is_empty() {
            populated.push("email");
        }
        if !user.roles.is_empty() {
            populated.push("roles");
        }
        if user.status != UserStatus::Unspecified as i32 {
            populated.push("status");
        }
        populated
    } else {
        let mut selected = Vec::new();
        for path in mask {
            match path {
                "*" => selected.extend(UPDATABLE_FIELDS),
                p if UPDATABLE_FIELDS.contains(&p) => selected.push(p),
                p if OUTPUT_ONLY_FIELDS.contains(&p) => {}
                unknown => violations.push(Violation::new(
                    "update_mask",
                    format!("unknown field path {unknown:?}; updatable fields are name, email, roles, status"),
                )),
            }
        }
        selected
    };

    let mut patch = UserPatch::default();
    for field in selected {
        match field {
            "name" => match name(&user.name) {
                Ok(()) => patch.name = Some(user.name.clone()),
                Err(description) => violations.push(Violation::new("user.name", description)),
            },
            "email" => match email(&user.email) {
                Ok(()) => patch.email = Some(user.email.clone()),
                Err(description) => violations.push(Violation::new("user.email", description)),
            },
            "roles" => match roles(&user.roles) {
                Ok(()) => patch.roles = Some(user.roles.clone()),
                Err(description) => violations.push(Violation::new("user.roles", description)),
            },
            _ => match UserStatus::try_from(user.status) {
                Ok(UserStatus::Unspecified) => violations.push(Violation::new(
                    "user.status",
                    "cannot be set to USER_STATUS_UNSPECIFIED; use ACTIVE, INACTIVE or SUSPENDED",
                )),
                Ok(status) => patch.status = Some(status),
                Err(_) => violations.push(Violation::new("user.status", format!("unknown status {}", user.status))),
            },
        }
    }
    if violations.is_empty() { Ok((id, patch)) } else { Err(violations) }
}

fn name(value: &str) -> Result<(), String> {
    let chars = value.chars().count();
    if value.trim().is_empty() {
        Err("is required".into())
    } else if chars > NAME_MAX_CHARS {
        Err(format!("must be at most {NAME_MAX_CHARS} characters, got {chars}"))
    } else if value.chars().any(char::is_control) {
        Err("must not contain control characters".into())
    } else {
        Ok(())
    }
}

/// A pragmatic address check: `local@domain`, a dot-separated domain of letters, digits and inner hyphens,
/// no whitespace or characters that need quoting. Unicode letters are allowed (RFC 6531).
fn email(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("is required".into());
    }
    if value.chars().count() > EMAIL_MAX_CHARS {
        return Err(format!("must be at most {EMAIL_MAX_CHARS} characters"));
    }
    let malformed = || Err(format!("{value:?} is not a well-formed email address (expected name@example.com)"));
    let Some((local, domain)) = value.rsplit_once('@') else {
        return malformed();
    };
    let local_ok = !local.is_empty()
        && local.chars().count() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| !c.is_whitespace() && !c.is_control() && !"@\"(),:;<>[\\]".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.chars().count() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    if local_ok && domain_ok { Ok(()) } else { malformed() }
}

fn roles(values: &[String]) -> Result<(), String> {
    if values.len() > ROLES_MAX {
        return Err(format!("at most {ROLES_MAX} roles, got {}", values.len()));
    }
    for (index, role) in values.iter().enumerate() {
        let valid = !role.is_empty()
            && role.chars().count() <= ROLE_MAX_CHARS
            && role.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !valid {
            return Err(format!(
                "role {index} ({role:?}) must be 1 to {ROLE_MAX_CHARS} characters of letters, digits, '.', '_', '-'"
            ));
        }
        if values[..index].contains(role) {
            return Err(format!("role {role:?} is listed twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::user::User;

    #[test]
    fn emails() {
        let good = ["ada@example.com", "a.b+tag@sub.example.co", "jörg@bücher.de", "x@a-b.io"];
        let bad = [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@exa mple.com",
            "ada@-example.com",
            "ada@example..com",
            ".ada@example.com",
            "ada..b@example.com",
            "a\"b@example.com",
        ];
        for value in good {
            assert_eq!(email(value), Ok(()), "{value}");
        }
        for value in bad {
            assert!(email(value).is_err(), "{value} should be rejected");
        }
        assert!(email(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn create_reports_every_violation() {
        let request = CreateUserRequest {
            name: " ".into(),
            email: "nope".into(),
            password: "short".into(),
            roles: vec!["ok".into(), "ok".into()],
        };
        let violations = create_request(&request, "requests[2].").err().unwrap_or_default();
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["requests[2].name", "requests[2].email", "requests[2].password", "requests[2].roles"]);
        assert!(violations[2].description.contains("at least 8"));
        let long_name = CreateUserRequest {
            name: "é".repeat(201),
            email: "a@b.io".into(),
            password: "12345678".into(),
            roles: vec![],
        };
        assert!(create_request(&long_name, "").is_err());
        let ok = CreateUserRequest { name: "é".repeat(200), ..long_name };
        assert_eq!(create_request(&ok, ""), Ok(()));
    }

    fn update(user: User, paths: Option<&[&str]>) -> Result<(i64, UserPatch), Vec<Violation>> {
        update_request(&UpdateUserRequest {
            user: Some(user),
            update_mask: paths.map(|p| pbjson_types::FieldMask { paths: p.iter().map(|s| s.to_string()).collect() }),
        })
    }

    #[test]
    fn update_without_mask_takes_populated_fields() {
        let (id, patch) = update(User { id: 7, name: "Ada".into(), ..Default::default() }, None).unwrap_or_default();
        assert_eq!(id, 7);
        assert_eq!(patch, UserPatch { name: Some("Ada".into()), ..Default::default() });
    }

    #[test]
    fn update_with_mask_takes_exactly_the_masked_fields() {
        let user = User { id: 7, name: "Ada".into(), email: "ada@example.com".into(), ..Default::default() };
        let (_, patch) = update(user.clone(), Some(&["email", "roles", "id"])).unwrap_or_default();
        assert_eq!(
            patch,
            UserPatch { email: Some("ada@example.com".into()), roles: Some(vec![]), ..Default::default() }
        );
        let errors = update(user.clone(), Some(&["nmae"])).err().unwrap_or_default();
        assert_eq!(
            errors,
            [Violation::new(
                "update_mask",
                "unknown field path \"nmae\"; updatable fields are name, email, roles, status"
            )]
        );
        let errors = update(user, Some(&["*"])).err().unwrap_or_default();
        assert_eq!(errors.iter().map(|v| v.field.as_str()).collect::<Vec<_>>(), ["user.status"]);
    }

    #[test]
    fn update_needs_a_user_with_a_positive_id() {
        assert_eq!(update_request(&UpdateUserRequest::default()).err().unwrap_or_default()[0].field, "user");
        let errors = update(User { id: 0, name: "Ada".into(), ..Default::default() }, None).err().unwrap_or_default();
        assert_eq!(errors[0].field, "user.id");
    }
}
