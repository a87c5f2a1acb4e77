//! Who is calling, as a verified token says: the subject and the roles.

use serde_json::Value;

/// The verified identity of a request, left in its extensions by the authentication layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`: the caller's user id.
    pub subject: Option<String>,
    /// The roles listed by the roles claim.
    pub roles: Vec<String>,
}

impl Caller {
    /// Reads the subject and the roles from verified claims. The roles claim is a dotted path (`roles`,
    /// `realm_access.roles`); it may hold an array of strings or one space-separated string. A missing claim
    /// means no roles.
    pub(crate) fn from_claims(claims: &Value, roles_path: &[String]) -> Self {
        let subject = claims.get("sub").and_then(Value::as_str).map(str::to_string);
        let mut node = Some(claims);
        for segment in roles_path {
            node = node.and_then(|n| n.get(segment));
        }
        let roles = match node {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            Some(Value::String(text)) => text.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        };
        Self { subject, roles }
    }

    /// Whether the caller holds at least one of `roles`.
    pub fn has_any_role(&self, roles: &[String]) -> bool {
        self.roles.iter().any(|held| roles.contains(held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_from_a_nested_claim() {
        let claims =
            serde_json::json!({"sub": "7", "realm_access": {"roles": ["admin", 3, "auditor"]}, "roles": "x y"});
        let path = ["realm_access".to_string(), "roles".to_string()];
        let caller = Caller::from_claims(&claims, &path);
        assert_eq!(caller.subject.as_deref(), Some("7"));
        assert_eq!(caller.roles, ["admin", "auditor"]);
        assert_eq!(Caller::from_claims(&claims, &["roles".to_string()]).roles, ["x", "y"]);
        assert!(Caller::from_claims(&claims, &["missing".to_string()]).roles.is_empty());
    }
}
