//! Descriptor files gathered from any source, merged by name into one descriptor pool.
//!
//! Files are kept as their serialized `FileDescriptorProto` bytes until the pool is built: decoding them into
//! `prost_types` would drop custom options such as `(google.api.http)`, which is all the gateway reads.

use bytes::Bytes;
use prost::Message;
use prost_reflect::DescriptorPool;

use super::LoadError;

/// A `FileDescriptorSet` whose files stay serialized.
#[derive(Clone, PartialEq, Message)]
struct RawFileDescriptorSet {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    file: Vec<Bytes>,
}

/// The two fields of a `FileDescriptorProto` needed to merge files and check their imports.
#[derive(Clone, PartialEq, Message)]
struct FileHeader {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, repeated, tag = "3")]
    dependency: Vec<String>,
}

struct RawFile {
    name: String,
    dependencies: Vec<String>,
    bytes: Bytes,
    /// Where the file came from (a descriptor-set path, ".proto sources", a cluster's reflection), for errors.
    origin: String,
}

/// Descriptor files from every source, each file name once.
#[derive(Default)]
pub struct FileSet {
    files: Vec<RawFile>,
}

impl FileSet {
    /// Adds the files of an encoded `FileDescriptorSet` (as `protoc --descriptor_set_out` or `buf build -o`
    /// write it).
    ///
    /// # Errors
    ///
    /// Bytes that are not a `FileDescriptorSet` (a truncated or foreign file).
    pub fn add_set(&mut self, encoded: &[u8], origin: &str) -> Result<(), LoadError> {
        let set = RawFileDescriptorSet::decode(encoded).map_err(|e| LoadError::Decode {
            origin: origin.to_string(),
            reason: format!("not a FileDescriptorSet: {e}"),
        })?;
        if set.file.is_empty() {
            return Err(LoadError::Decode { origin: origin.to_string(), reason: "the set holds no files".into() });
        }
        for file in set.file {
            self.add_file(file, origin)?;
        }
        Ok(())
    }

    /// Adds one encoded `FileDescriptorProto`. A file already present under the same name is kept: sources
    /// commonly repeat shared imports such as `google/api/http.proto`.
    ///
    /// # Errors
    ///
    /// Bytes that are not a `FileDescriptorProto`, or a file with no name.
    pub fn add_file(&mut self, bytes: Bytes, origin: &str) -> Result<(), LoadError> {
        let header = FileHeader::decode(bytes.clone()).map_err(|e| LoadError::Decode {
            origin: origin.to_string(),
            reason: format!("not a FileDescriptorProto: {e}"),
        })?;
        if header.name.is_empty() {
            return Err(LoadError::Decode { origin: origin.to_string(), reason: "a file has no name".into() });
        }
        if self.contains(&header.name) {
            return Ok(());
        }
        self.files.push(RawFile {
            name: header.name,
            dependencies: header.dependency,
            bytes,
            origin: origin.to_string(),
        });
        Ok(())
    }

    /// Adds the files of `other` that are not here yet.
    pub fn extend(&mut self, other: FileSet) {
        for file in other.files {
            if !self.contains(&file.name) {
                self.files.push(file);
            }
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.files.iter().any(|file| file.name == name)
    }

    /// Imports of the gathered files that are not among them.
    pub fn missing_imports(&self) -> Vec<String> {
        let mut missing: Vec<String> = Vec::new();
        for file in &self.files {
            for import in &file.dependencies {
                if !self.contains(import) && !missing.contains(import) {
                    missing.push(import.clone());
                }
            }
        }
        missing
    }

    /// Builds the pool.
    ///
    /// # Errors
    ///
    /// A file importing one that no source gave ([`LoadError::MissingImport`], naming both), or descriptors
    /// that do not link (a type used but defined nowhere, a name defined twice).
    pub fn into_pool(self) -> Result<DescriptorPool, LoadError> {
        for file in &self.files {
            if let Some(import) = file.dependencies.iter().find(|import| !self.contains(import)) {
                return Err(LoadError::MissingImport {
                    origin: file.origin.clone(),
                    file: file.name.clone(),
                    import: import.clone(),
                });
            }
        }
        let origins: Vec<&str> = {
            let mut origins: Vec<&str> = self.files.iter().map(|file| file.origin.as_str()).collect();
            origins.dedup();
            origins
        };
        let origin = origins.join(", ");
        let encoded = RawFileDescriptorSet { file: self.files.iter().map(|file| file.bytes.clone()).collect() };
        DescriptorPool::decode(encoded.encode_to_vec().as_slice())
            .map_err(|e| LoadError::Decode { origin, reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, imports: &[&str]) -> Bytes {
        let header = FileHeader { name: name.into(), dependency: imports.iter().map(|s| s.to_string()).collect() };
        Bytes::from(header.encode_to_vec())
    }

    #[test]
    fn a_missing_import_names_the_file_and_the_import() -> Result<(), LoadError> {
        let mut set = FileSet::default();
        set.add_file(file("a.proto", &["b.proto"]), "set.pb")?;
        assert_eq!(set.missing_imports(), ["b.proto"]);
        let error = set.into_pool().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("a.proto") && error.contains("b.proto") && error.contains("set.pb"), "{error}");
        Ok(())
    }

    #[test]
    fn files_merge_by_name_and_link() -> Result<(), LoadError> {
        let mut set = FileSet::default();
        set.add_file(file("b.proto", &[]), "one")?;
        set.add_file(file("a.proto", &["b.proto"]), "two")?;
        set.add_file(file("b.proto", &[]), "two")?;
        assert!(set.missing_imports().is_empty());
        let pool = set.into_pool()?;
        assert_eq!(pool.files().count(), 2);
        Ok(())
    }

    #[test]
    fn garbage_is_not_a_descriptor_set() {
        let mut set = FileSet::default();
        assert!(set.add_set(b"\x0a\xff\xff\xff", "broken.pb").is_err());
        assert!(set.add_set(b"", "empty.pb").is_err());
    }
}
