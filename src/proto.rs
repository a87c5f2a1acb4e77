//! Generated protobuf code and the embedded descriptor set; nothing else.

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

/// The encoded FileDescriptorSet of everything in `proto/`, custom options (`google.api.http`) included.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// The descriptors of [`FILE_DESCRIPTOR_SET`], decoded once.
///
/// Decoding cannot fail at run time: build.rs produced these bytes from a successful compile, and a test
/// decodes them.
#[allow(clippy::expect_used)]
pub static DESCRIPTOR_POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("the descriptor set embedded by build.rs decodes")
});

/// `google.rpc`: the Status message and its standard error details, as carried in `grpc-status-details-bin`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod google {
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// The `user` package: the UserService API.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod user {
    include!(concat!(env!("OUT_DIR"), "/user.rs"));
    include!(concat!(env!("OUT_DIR"), "/user.serde.rs"));

    impl std::fmt::Debug for CreateUserRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("CreateUserRequest")
                .field("name", &self.name)
                .field("email", &self.email)
                .field("password", &"<redacted>")
                .field("roles", &self.roles)
                .finish()
        }
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::Value;

    use super::DESCRIPTOR_POOL;

    /// The gateway reads routes from these options; protox's decoded descriptor set would have dropped them.
    #[test]
    fn embedded_descriptors_keep_the_http_rules() {
        let service = DESCRIPTOR_POOL.get_service_by_name("user.UserService").expect("service in the pool");
        let http = DESCRIPTOR_POOL.get_extension_by_name("google.api.http").expect("google.api.http extension");
        let get_user = service.methods().find(|m| m.name() == "GetUser").expect("GetUser");
        let options = get_user.options();
        assert!(options.has_extension(&http));
        let rule = options.get_extension(&http);
        let Value::Message(rule) = rule.as_ref() else { panic!("HttpRule is a message") };
        assert_eq!(rule.get_field_by_name("get").as_deref().and_then(Value::as_str), Some("/v1/users/{id}"));
        assert_eq!(rule.get_field_by_name("response_body").as_deref().and_then(Value::as_str), Some("user"));
        assert!(service.methods().all(|m| m.options().has_extension(&http)), "every RPC has a rule");
    }
}
