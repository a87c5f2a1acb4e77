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
