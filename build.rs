//! Compiles `proto/` with protox (pure Rust: a fresh machine needs no protoc) into:
//! - `descriptor.bin`: the encoded FileDescriptorSet. Encoded bytes, because protox's decoded
//!   `prost_types::FileDescriptorSet` silently drops extension options such as `(google.api.http)`, which the
//!   gateway reads at start-up.
//! - `<package>.rs`: prost messages + tonic client and server, with well-known types from pbjson-types and a
//!   `prost_reflect::ReflectMessage` derive pointing at the embedded descriptor pool.
//! - `<package>.serde.rs`: pbjson serde impls (proto3 JSON mapping).

use std::{env, error::Error, fs, path::PathBuf};

/// The packages whose code the crate includes (see `src/proto.rs`).
const PACKAGES: &[&str] = &["user"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=migrations");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    // google.rpc's status and error details ride along so the gateway can render error details as JSON.
    compiler.open_files(["user.proto", "google/rpc/status.proto", "google/rpc/error_details.proto"])?;

    let encoded = compiler.encode_file_descriptor_set();
    fs::write(out_dir.join("descriptor.bin"), &encoded)?;

    let mut codegen = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        // The password must never reach a log line, even through `{:?}`: its Debug is written by hand.
        .skip_debug([".user.CreateUserRequest"]);
    for message in compiler.descriptor_pool().all_messages() {
        if PACKAGES.contains(&message.package_name()) {
            let name = message.full_name();
            codegen = codegen.message_attribute(
                name,
                format!(
                    "#[derive(::prost_reflect::ReflectMessage)]\n\
                     #[prost_reflect(descriptor_pool = \"crate::proto::DESCRIPTOR_POOL\", message_name = \"{name}\")]"
                ),
            );
        }
    }
    codegen.compile_fds(compiler.file_descriptor_set())?;

    let package_paths: Vec<String> = PACKAGES.iter().map(|p| format!(".{p}")).collect();
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .build(&package_paths)?;
    Ok(())
}
