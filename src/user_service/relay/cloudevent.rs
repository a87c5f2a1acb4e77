//! A committed change as a CloudEvents 1.0 event in the structured JSON format
//! (<https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/formats/json-format.md>).

use serde::Serialize;

use crate::proto::user::User;
use crate::user_service::store::{Change, ChangeKind};

/// Who produces the events (the CloudEvents `source`).
pub const SOURCE: &str = "/portico/user-service";

/// One CloudEvent. `id` is the revision, which is unique per database and the `Nats-Msg-Id` too, so a
/// consumer can de-duplicate and order by it; `revision` repeats it as a number (an extension attribute).
#[derive(Debug, Serialize)]
pub struct CloudEvent<'a> {
    pub specversion: &'static str,
    pub id: String,
    pub source: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The user's id.
    pub subject: String,
    /// When the change committed, RFC 3339 (UTC).
    pub time: &'a pbjson_types::Timestamp,
    pub datacontenttype: &'static str,
    pub revision: i64,
    /// The user after the change (for a delete, its last values), in proto3 JSON.
    pub data: &'a User,
}

/// The CloudEvents `type` of a change.
pub fn event_type(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Created => "user.created",
        ChangeKind::Updated => "user.updated",
        ChangeKind::Deleted => "user.deleted",
    }
}

/// The event for `change`.
pub fn event(change: &Change) -> CloudEvent<'_> {
    CloudEvent {
        specversion: "1.0",
        id: change.revision.to_string(),
        source: SOURCE,
        kind: event_type(change.kind),
        subject: change.user.id.to_string(),
        time: &change.committed_at,
        datacontenttype: "application/json",
        revision: change.revision,
        data: &change.user,
    }
}

/// The event for `change` as JSON bytes.
///
/// Fails only if the user cannot be serialised, which generated proto3 JSON code does not do.
pub fn encode(change: &Change) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&event(change))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_becomes_a_structured_cloudevent() -> Result<(), serde_json::Error> {
        let user = User { id: 7, name: "Ada".into(), email: "ada@example.com".into(), ..Default::default() };
        let committed_at = pbjson_types::Timestamp { seconds: 1_700_000_000, nanos: 123_456_000 };
        let change = Change { revision: 42, kind: ChangeKind::Updated, user, previous: None, committed_at };
        let json: serde_json::Value = serde_json::from_slice(&encode(&change)?)?;
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["id"], "42");
        assert_eq!(json["revision"], 42);
        assert_eq!(json["source"], SOURCE);
        assert_eq!(json["type"], "user.updated");
        assert_eq!(json["subject"], "7");
        assert_eq!(json["time"], "2023-11-14T22:13:20.123456+00:00");
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["data"]["id"], "7", "proto3 JSON: int64 as a string");
        assert_eq!(json["data"]["email"], "ada@example.com");
        assert_eq!(event_type(ChangeKind::Created), "user.created");
        assert_eq!(event_type(ChangeKind::Deleted), "user.deleted");
        Ok(())
    }
}
