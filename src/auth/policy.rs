//! Access rules declared in the proto as `portico.auth` method options (see proto/portico/options.proto),
//! read from descriptors: by the UserService to decide each call, and by the gateway's OpenAPI generator to
//! show each operation's security requirement. One source, so the two cannot disagree.

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, MethodDescriptor, ReflectMessage, Value};

use crate::auth::caller::Caller;

/// The full name of the method option.
pub const AUTH_OPTION: &str = "portico.auth";

/// One method's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRule {
    /// Any one of these roles grants the call.
    pub roles: Vec<String>,
    /// The request field (a path of field names) holding a user id the caller may act on as itself.
    pub self_field: Vec<String>,
    /// Fields beside the self field that a caller acting on itself may not change.
    pub self_immutable_fields: Vec<String>,
}

/// Why a rule in the descriptors cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid portico.auth on {rpc}: {reason}")]
pub struct RuleError {
    pub rpc: String,
    pub reason: String,
}

/// A refused call; the message names what would have been needed, never anything about the target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl AuthRule {
    /// The rule of `method`, when it has one.
    ///
    /// # Errors
    ///
    /// The option is not an `AuthRule`, or names fields the request does not have.
    pub fn of(method: &MethodDescriptor) -> Result<Option<Self>, RuleError> {
        let Some(extension) = method.parent_pool().get_extension_by_name(AUTH_OPTION) else { return Ok(None) };
        let options = method.options();
        if !options.has_extension(&extension) {
            return Ok(None);
        }
        let invalid = |reason: String| RuleError { rpc: method.full_name().to_string(), reason };
        let value = options.get_extension(&extension);
        let Value::Message(rule) = value.as_ref() else { return Err(invalid("not a portico.AuthRule".into())) };
        let roles = strings(rule, "roles");
        let self_field: Vec<String> =
            string(rule, "self_field").split('.').filter(|s| !s.is_empty()).map(str::to_string).collect();
        let self_immutable_fields = strings(rule, "self_immutable_fields");
        if roles.is_empty() && self_field.is_empty() {
            return Err(invalid("neither roles nor self_field: nobody could call it".into()));
        }
        let parent = resolve_parent(&method.input(), &self_field).map_err(invalid)?;
        if let Some(parent) = &parent {
            for name in &self_immutable_fields {
                if parent.get_field_by_name(name).is_none() {
                    return Err(invalid(format!(
                        "self_immutable_fields: {name:?} is not a field of {}",
                        parent.full_name()
                    )));
                }
            }
        } else if !self_immutable_fields.is_empty() {
            return Err(invalid("self_immutable_fields needs self_field".into()));
        }
        if !self_field.is_empty() && method.is_client_streaming() {
            return Err(invalid("self_field cannot apply to a client-streaming method".into()));
        }
        Ok(Some(Self { roles, self_field, self_immutable_fields }))
    }

    /// Whether `caller` may make this call. `request` is the request message (None for a client stream,
    /// whose messages come later: then only the roles count).
    ///
    /// # Errors
    ///
    /// [`Denied`] naming the roles that would grant the call.
    pub fn authorize(&self, caller: &Caller, request: Option<&DynamicMessage>) -> Result<(), Denied> {
        if caller.has_any_role(&self.roles) {
            return Ok(());
        }
        let acting_on_self = !self.self_field.is_empty()
            && request.is_some_and(|request| {
                caller
                    .subject
                    .as_deref()
                    .is_some_and(|subject| self_id(request, &self.self_field).as_deref() == Some(subject))
            });
        if !acting_on_self {
            return Err(Denied(self.needed(true)));
        }
        let changed: Vec<&str> = request
            .map(|request| {
                self.self_immutable_fields
                    .iter()
                    .map(String::as_str)
                    .filter(|f| changes(request, &self.self_field, f))
                    .collect()
            })
            .unwrap_or_default();
        if changed.is_empty() {
            Ok(())
        } else {
            Err(Denied(format!(
                "changing {} of your own user needs role {}",
                changed.join(" or "),
                self.roles.join(" or ")
            )))
        }
    }

    /// What the rule asks for, in words (for denials and for the OpenAPI document).
    pub fn needed(&self, mention_self: bool) -> String {
        let roles = match self.roles.as_slice() {
            [] => String::new(),
            [one] => format!("role {one}"),
            many => format!("one of the roles {}", many.join(", ")),
        };
        match (roles.is_empty(), mention_self && !self.self_field.is_empty()) {
            (false, true) => format!("this call needs {roles}, or to be made on the caller's own user"),
            (true, true) => "this call may only be made on the caller's own user".into(),
            _ => format!("this call needs {roles}"),
        }
    }
}

/// The rules of every method in `pool` that has one, by gRPC path (`/package.Service/Method`).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: HashMap<String, AuthRule>,
}

impl Policy {
    /// # Errors
    ///
    /// The first rule that cannot work.
    pub fn from_pool(pool: &DescriptorPool) -> Result<Self, RuleError> {
        let mut rules = HashMap::new();
        for service in pool.services() {
            for method in service.methods() {
                if let Some(rule) = AuthRule::of(&method)? {
                    rules.insert(format!("/{}/{}", service.full_name(), method.name()), rule);
                }
            }
        }
        Ok(Self { rules })
    }

    /// The rule for a gRPC path; None means any authenticated caller.
    pub fn rule(&self, grpc_path: &str) -> Option<&AuthRule> {
        self.rules.get(grpc_path)
    }

    /// Decides one call of `grpc_path` by `caller` (see [`AuthRule::authorize`]).
    ///
    /// # Errors
    ///
    /// [`Denied`] when the method's rule refuses the caller.
    pub fn authorize<M: ReflectMessage>(
        &self,
        grpc_path: &str,
        caller: &Caller,
        request: Option<&M>,
    ) -> Result<(), Denied> {
        let Some(rule) = self.rule(grpc_path) else { return Ok(()) };
        let dynamic = request.map(ReflectMessage::transcode_to_dynamic);
        rule.authorize(caller, dynamic.as_ref())
    }
}

/// The message that holds the self field's last segment, checking the path on the way.
fn resolve_parent(input: &MessageDescriptor, path: &[String]) -> Result<Option<MessageDescriptor>, String> {
    let Some((leaf, parents)) = path.split_last() else { return Ok(None) };
    let mut message = input.clone();
    for name in parents {
        let field = message
            .get_field_by_name(name)
            .ok_or(format!("self_field: {name:?} is not a field of {}", message.full_name()))?;
        let Kind::Message(next) = field.kind() else {
            return Err(format!("self_field: {name:?} is not a message field"));
        };
        message = next;
    }
    let field = message
        .get_field_by_name(leaf)
        .ok_or(format!("self_field: {leaf:?} is not a field of {}", message.full_name()))?;
    if field.is_list()
        || !matches!(field.kind(), Kind::Int64 | Kind::Uint64 | Kind::Int32 | Kind::Uint32 | Kind::String)
    {
        return Err(format!("self_field: {leaf:?} must be a single integer or string"));
    }
    Ok(Some(message))
}

/// The message the self field's path leads to, less its last segment.
fn parent_message<'a>(request: &'a DynamicMessage, path: &[String]) -> Option<std::borrow::Cow<'a, DynamicMessage>> {
    let mut current = std::borrow::Cow::Borrowed(request);
    for name in path.iter().take(path.len().saturating_sub(1)) {
        let value = current.get_field_by_name(name)?;
        let Value::Message(next) = value.into_owned() else { return None };
        current = std::borrow::Cow::Owned(next);
    }
    Some(current)
}

/// The self field's value as text (ids are compared with `sub` as strings); None when unset.
fn self_id(request: &DynamicMessage, path: &[String]) -> Option<String> {
    let parent = parent_message(request, path)?;
    let leaf = path.last()?;
    let value = parent.get_field_by_name(leaf)?;
    let text = match value.as_ref() {
        Value::I64(v) => v.to_string(),
        Value::U64(v) => v.to_string(),
        Value::I32(v) => v.to_string(),
        Value::U32(v) => v.to_string(),
        Value::String(v) => v.clone(),
        _ => return None,
    };
    (!text.is_empty() && text != "0").then_some(text)
}

/// Whether the request would change `field` (beside the self field), by AIP-134: named by the request's
/// FieldMask (or `*`), or, without a mask, set to a non-default value.
fn changes(request: &DynamicMessage, self_path: &[String], field: &str) -> bool {
    let mask_field = request
        .descriptor()
        .fields()
        .find(|f| matches!(f.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask"));
    if let Some(mask_field) = mask_field
        && request.has_field(&mask_field)
    {
        let mask = request.get_field(&mask_field);
        let paths: Vec<String> = match mask.as_ref() {
            Value::Message(mask) => match mask.get_field_by_name("paths").as_deref() {
                Some(Value::List(paths)) => paths.iter().filter_map(Value::as_str).map(str::to_string).collect(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        if !paths.is_empty() {
            let prefix = self_path[..self_path.len().saturating_sub(1)].join(".");
            let parent = parent_message(request, self_path);
            let json_name = parent
                .as_ref()
                .and_then(|p| p.descriptor().get_field_by_name(field))
                .map(|f| f.json_name().to_string());
            return paths.iter().any(|path| {
                let relative = path.strip_prefix(&format!("{prefix}.")).unwrap_or(path);
                relative == "*" || relative == field || json_name.as_deref() == Some(relative)
            });
        }
    }
    parent_message(request, self_path)
        .is_some_and(|parent| parent.get_field_by_name(field).is_some_and(|value| !is_default(&value)))
}

fn is_default(value: &Value) -> bool {
    match value {
        Value::Bool(v) => !v,
        Value::I32(v) | Value::EnumNumber(v) => *v == 0,
        Value::I64(v) => *v == 0,
        Value::U32(v) => *v == 0,
        Value::U64(v) => *v == 0,
        Value::F32(v) => *v == 0.0,
        Value::F64(v) => *v == 0.0,
        Value::String(v) => v.is_empty(),
        Value::Bytes(v) => v.is_empty(),
        Value::List(v) => v.is_empty(),
        Value::Map(v) => v.is_empty(),
        Value::Message(_) => false,
    }
}

fn strings(message: &DynamicMessage, field: &str) -> Vec<String> {
    match message.get_field_by_name(field).as_deref() {
        Some(Value::List(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn string(message: &DynamicMessage, field: &str) -> String {
    message.get_field_by_name(field).as_deref().and_then(Value::as_str).unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::DESCRIPTOR_POOL;
    use crate::proto::user::{UpdateUserRequest, User, UserStatus};

    fn caller(subject: &str, roles: &[&str]) -> Caller {
        Caller { subject: Some(subject.into()), roles: roles.iter().map(|r| r.to_string()).collect() }
    }

    #[test]
    fn every_user_service_method_declares_a_rule() -> Result<(), RuleError> {
        let policy = Policy::from_pool(&DESCRIPTOR_POOL)?;
        let service = DESCRIPTOR_POOL.get_service_by_name("user.UserService");
        let methods: Vec<_> = service.iter().flat_map(|s| s.methods()).collect();
        assert!(!methods.is_empty());
        for method in methods {
            assert!(policy.rule(&format!("/user.UserService/{}", method.name())).is_some(), "{}", method.name());
        }
        Ok(())
    }

    #[test]
    fn self_updates_may_not_touch_roles_or_status() -> Result<(), RuleError> {
        let policy = Policy::from_pool(&DESCRIPTOR_POOL)?;
        let path = "/user.UserService/UpdateUser";
        let update = |id: i64, roles: &[&str], status: UserStatus, mask: Option<&[&str]>| UpdateUserRequest {
            user: Some(User {
                id,
                name: "n".into(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                status: status as i32,
                ..User::default()
            }),
            update_mask: mask.map(|m| pbjson_types::FieldMask { paths: m.iter().map(|p| p.to_string()).collect() }),
        };
        let me = caller("7", &[]);
        assert!(policy.authorize(path, &me, Some(&update(7, &[], UserStatus::Unspecified, None))).is_ok());
        assert!(policy.authorize(path, &me, Some(&update(8, &[], UserStatus::Unspecified, None))).is_err());
        assert!(policy.authorize(path, &me, Some(&update(7, &["admin"], UserStatus::Unspecified, None))).is_err());
        assert!(policy.authorize(path, &me, Some(&update(7, &[], UserStatus::Suspended, None))).is_err());
        assert!(
            policy.authorize(path, &me, Some(&update(7, &["admin"], UserStatus::Unspecified, Some(&["name"])))).is_ok()
        );
        for mask in [&["roles"][..], &["*"], &["name", "status"]] {
            assert!(
                policy.authorize(path, &me, Some(&update(7, &[], UserStatus::Unspecified, Some(mask)))).is_err(),
                "{mask:?}"
            );
        }
        let admin = caller("1", &["admin"]);
        assert!(policy.authorize(path, &admin, Some(&update(7, &["admin"], UserStatus::Suspended, None))).is_ok());
        Ok(())
    }
}
