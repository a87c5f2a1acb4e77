//! `--proto FILE --proto-path DIR`: .proto sources compiled at load time with protox, so no protoc is needed.
//!
//! Besides the user's include paths, the compiler finds the well-known types (bundled with protox) and the
//! files every annotated service imports, `google/api/{annotations,http,httpbody}.proto`, and Portico's own
//! `portico/options.proto`, built into the binary, so users need not vendor them. A user's own copy in an
//! include path wins over the built-in one.

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver};

use super::LoadError;

/// The built-in files, by import name.
const BUILT_IN: [(&str, &str); 6] = [
    ("google/api/annotations.proto", include_str!("../../../proto/google/api/annotations.proto")),
    ("google/api/http.proto", include_str!("../../../proto/google/api/http.proto")),
    ("google/api/httpbody.proto", include_str!("../../../proto/google/api/httpbody.proto")),
    ("google/rpc/status.proto", include_str!("../../../proto/google/rpc/status.proto")),
    ("google/rpc/error_details.proto", include_str!("../../../proto/google/rpc/error_details.proto")),
    ("portico/options.proto", include_str!("../../../proto/portico/options.proto")),
];

struct BuiltInFiles;

impl FileResolver for BuiltInFiles {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match BUILT_IN.iter().find(|(built_in, _)| *built_in == name) {
            Some((name, source)) => File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// Compiles `files` against `include_paths` (the current directory when there are none, as protoc does) and
/// returns the encoded FileDescriptorSet, imports and source info (comments) included.
///
/// # Errors
///
/// [`LoadError::Compile`] with `file:line:column` where the compiler knows the place.
pub fn compile(files: &[PathBuf], include_paths: &[PathBuf]) -> Result<Vec<u8>, LoadError> {
    let mut resolver = ChainFileResolver::new();
    let default_include = [PathBuf::from(".")];
    let includes = if include_paths.is_empty() { &default_include[..] } else { include_paths };
    for include in includes {
        resolver.add(IncludeFileResolver::new(include.clone()));
    }
    resolver.add(BuiltInFiles);
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true).include_source_info(true);
    for file in files {
        compiler.open_file(file).map_err(|error| compile_error(file, &error))?;
    }
    Ok(compiler.encode_file_descriptor_set())
}

/// The compiler's message, prefixed with `file:line:column` when it points at a place in a source.
fn compile_error(opened: &Path, error: &protox::Error) -> LoadError {
    let place = error.labels().and_then(|mut labels| labels.next()).and_then(|label| {
        let source = error.source_code()?;
        let contents = source.read_span(label.inner(), 0, 0).ok()?;
        let name = contents.name().map_or_else(|| error.file().unwrap_or_default().to_string(), str::to_string);
        Some(format!("{name}:{}:{}", contents.line() + 1, contents.column() + 1))
    });
    let place = place.or_else(|| error.file().map(str::to_string)).unwrap_or_else(|| opened.display().to_string());
    LoadError::Compile { place, message: error.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, source: &str) -> Result<PathBuf, std::io::Error> {
        let path = dir.join(name);
        std::fs::write(&path, source)?;
        Ok(path)
    }

    #[test]
    fn google_api_and_well_known_types_need_no_vendoring() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = write(
            dir.path(),
            "svc.proto",
            "syntax = \"proto3\"; package t;\n\
             import \"google/api/annotations.proto\"; import \"google/api/httpbody.proto\";\n\
             import \"google/protobuf/timestamp.proto\";\n\
             message R { google.protobuf.Timestamp at = 1; }\n\
             service S { rpc A(R) returns (google.api.HttpBody) { option (google.api.http) = { get: \"/a\" }; } }",
        )?;
        let encoded = compile(&[file], &[dir.path().to_path_buf()])?;
        let pool = prost_reflect::DescriptorPool::decode(encoded.as_slice())?;
        let http = pool.get_extension_by_name("google.api.http").ok_or("no google.api.http")?;
        let rpc = pool.get_service_by_name("t.S").ok_or("no t.S")?.methods().next().ok_or("no method")?;
        assert!(rpc.options().has_extension(&http), "the rule survives compilation");
        Ok(())
    }

    #[test]
    fn errors_point_at_file_line_and_column() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file =
            write(dir.path(), "broken.proto", "syntax = \"proto3\";\npackage t;\nmessage M {\n  strin x = 1;\n}\n")?;
        let error = compile(&[file], &[dir.path().to_path_buf()]).err().ok_or("compiled")?.to_string();
        assert!(error.contains("broken.proto:4:3"), "{error}");
        let file = write(dir.path(), "imports.proto", "syntax = \"proto3\";\nimport \"missing/dep.proto\";\n")?;
        let error = compile(&[file], &[dir.path().to_path_buf()]).err().ok_or("compiled")?.to_string();
        assert!(error.contains("imports.proto:2:") && error.contains("missing/dep.proto"), "{error}");
        Ok(())
    }
}
