//! Where the events go: the subjects `<prefix>.created|updated|deleted` and the JetStream stream that holds
//! `<prefix>.>`. Both names are checked once, at start-up, against NATS's rules.

use crate::user_service::store::ChangeKind;

/// The subject prefix when none is configured.
pub const DEFAULT_SUBJECT_PREFIX: &str = "users";
/// The stream name when none is configured.
pub const DEFAULT_STREAM: &str = "USERS";
/// JetStream keeps a stream in a directory of its name; NATS documents 255 characters as the limit.
const MAX_STREAM_NAME: usize = 255;

/// The subject prefix and stream name of the user events, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNames {
    subject_prefix: String,
    stream: String,
}

/// A subject prefix or stream name NATS would reject or misread.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("subject prefix {prefix:?} {reason}")]
    SubjectPrefix { prefix: String, reason: &'static str },
    #[error("stream name {name:?} {reason}")]
    Stream { name: String, reason: &'static str },
}

impl Default for EventNames {
    fn default() -> Self {
        Self { subject_prefix: DEFAULT_SUBJECT_PREFIX.into(), stream: DEFAULT_STREAM.into() }
    }
}

impl EventNames {
    /// Checks both names.
    ///
    /// Fails when the prefix is not one or more dot-separated subject tokens (each non-empty, without
    /// whitespace, control characters, `*` or `>`), or the stream name is empty, longer than 255 characters, or
    /// has anything but ASCII letters, digits, `-` and `_`.
    pub fn new(subject_prefix: &str, stream: &str) -> Result<Self, NameError> {
        let prefix_error = |reason| NameError::SubjectPrefix { prefix: subject_prefix.into(), reason };
        if subject_prefix.is_empty() {
            return Err(prefix_error("is empty"));
        }
        for token in subject_prefix.split('.') {
            if token.is_empty() {
                return Err(prefix_error("has an empty token (a leading, trailing or double '.')"));
            }
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(prefix_error("has whitespace or control characters"));
            }
            if token.contains(['*', '>']) {
                return Err(prefix_error("has a wildcard ('*' or '>'); it must name subjects, not match them"));
            }
        }
        let stream_error = |reason| NameError::Stream { name: stream.into(), reason };
        if stream.is_empty() {
            return Err(stream_error("is empty"));
        }
        if stream.len() > MAX_STREAM_NAME {
            return Err(stream_error("is longer than 255 characters"));
        }
        if !stream.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(stream_error("may only have ASCII letters, digits, '-' and '_'"));
        }
        Ok(Self { subject_prefix: subject_prefix.into(), stream: stream.into() })
    }

    pub fn subject_prefix(&self) -> &str {
        &self.subject_prefix
    }

    /// The JetStream stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The subject a change of `kind` is published on: `<prefix>.created|updated|deleted`.
    pub fn subject(&self, kind: ChangeKind) -> String {
        let last = match kind {
            ChangeKind::Created => "created",
            ChangeKind::Updated => "updated",
            ChangeKind::Deleted => "deleted",
        };
        format!("{}.{last}", self.subject_prefix)
    }

    /// The stream's subjects: `<prefix>.>`.
    pub fn subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_prefix() -> Result<(), NameError> {
        let names = EventNames::new("acme.users", "ACME_USERS-1")?;
        assert_eq!(names.subject(ChangeKind::Created), "acme.users.created");
        assert_eq!(names.subject(ChangeKind::Deleted), "acme.users.deleted");
        assert_eq!(names.subjects(), "acme.users.>");
        assert_eq!(names.stream(), "ACME_USERS-1");
        let defaults = EventNames::default();
        assert_eq!(defaults.subject(ChangeKind::Updated), "users.updated");
        assert_eq!((defaults.subjects().as_str(), defaults.stream()), ("users.>", "USERS"));
        Ok(())
    }

    #[test]
    fn bad_names_are_rejected_with_the_reason() {
        let prefixes = ["", ".users", "users.", "a..b", "us ers", "users.*", "users.>", "tab\there"];
        for prefix in prefixes {
            let error = EventNames::new(prefix, "USERS").err();
            assert!(matches!(error, Some(NameError::SubjectPrefix { .. })), "{prefix:?}: {error:?}");
        }
        let long = "S".repeat(256);
        for stream in ["", "US.ERS", "US ERS", "USERS>", "US*", "a/b", "a\\b", long.as_str()] {
            let error = EventNames::new("users", stream).err();
            assert!(matches!(error, Some(NameError::Stream { .. })), "{stream:?}: {error:?}");
        }
    }
}
