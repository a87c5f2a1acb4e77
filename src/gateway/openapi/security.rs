//! The security of operations, from the `portico.auth` method options (the rules the UserService enforces):
//! a bearer-JWT scheme in the components, and for each operation whose RPC has a rule, one requirement per
//! role that grants it (alternatives, as OpenAPI 3.1 lists role names for non-OAuth schemes), plus a plain
//! bearer requirement where a caller may act on itself. Swagger UI shows its "Authorize" button from these.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};

use crate::auth::policy::AuthRule;
use crate::gateway::rules::Route;

/// The name of the scheme in `components.securitySchemes`.
pub(super) const BEARER_SCHEME: &str = "bearerAuth";

/// What an operation requires, when its RPC declares a rule.
pub(super) struct Access {
    pub requirements: Vec<SecurityRequirement>,
    /// The rule in words, for the operation's description.
    pub description: String,
}

/// The access rule of a route's RPC, as OpenAPI states it. A rule that cannot work is left out with a warning
/// (the service refuses to start with it, so it is never enforced either).
pub(super) fn access(route: &Route) -> Option<Access> {
    let rule = match AuthRule::of(&route.rpc) {
        Ok(rule) => rule?,
        Err(error) => {
            tracing::warn!(%error, "access rule left out of the OpenAPI document");
            return None;
        }
    };
    let mut requirements: Vec<SecurityRequirement> =
        rule.roles.iter().map(|role| SecurityRequirement::new(BEARER_SCHEME, [role.as_str()])).collect();
    if !rule.self_field.is_empty() {
        requirements.push(SecurityRequirement::new(BEARER_SCHEME, Vec::<String>::new()));
    }
    let mut description = format!("Requires a bearer token: {}.", rule.needed(true).trim_start_matches("this call "));
    if !rule.self_immutable_fields.is_empty() {
        description.push_str(&format!(
            " Changing {} of the caller's own user needs {}.",
            rule.self_immutable_fields.join(" or "),
            rule.roles.join(" or ")
        ));
    }
    Some(Access { requirements, description })
}

/// The bearer-JWT scheme.
pub(super) fn bearer_scheme() -> SecurityScheme {
    SecurityScheme::Http(
        HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some("A JWT from the identity provider, sent as `Authorization: Bearer <token>`; its roles claim grants access."))
            .build(),
    )
}
