//! Proto comments → descriptions.
//!
//! Reads the comments on descriptors from their file's source info (leading comments, else trailing ones) and
//! shapes them into the document's text: descriptions, one-line summaries, and the note that a oneof's members
//! exclude each other. Descriptors compiled without source info simply have no comments.

use prost_reflect::{FieldDescriptor, FileDescriptor};

/// A field's comments, and for a member of a oneof, which fields exclude each other.
pub(super) fn field_comments(field: &FieldDescriptor) -> Option<String> {
    let own = comments(&field.parent_file(), field.path());
    match field.containing_oneof().filter(|oneof| !oneof.is_synthetic()) {
        Some(oneof) => {
            let members = oneof.fields().map(|member| format!("`{}`", member.json_name())).collect::<Vec<_>>();
            Some(join_paragraphs(
                own,
                format!("At most one of {} is set (oneof `{}`).", members.join(", "), oneof.name()),
            ))
        }
        None => own,
    }
}

/// The comments on the element at `path` in `file`'s source info: leading, else trailing. `None` when there are
/// none, or when the descriptors were built without source info.
pub(super) fn comments(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let proto = file.file_descriptor_proto();
    let location = proto.source_code_info.as_ref()?.location.iter().find(|location| location.path == path)?;
    let raw = location
        .leading_comments
        .as_deref()
        .filter(|text| !text.trim().is_empty())
        .or(location.trailing_comments.as_deref())?;
    // `// text` arrives as " text": drop that one space per line, but keep deeper indentation (code samples).
    let lines: Vec<&str> = raw.lines().map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end()).collect();
    let text = lines.join("\n");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// The first sentence of the first paragraph, on one line.
pub(super) fn summary(text: &str) -> String {
    let paragraph = text.split("\n\n").next().unwrap_or(text);
    let flat = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut from = 0;
    while let Some(offset) = flat[from..].find(". ") {
        let end = from + offset + 1;
        let sentence = &flat[..end];
        if !(sentence.ends_with("e.g.") || sentence.ends_with("i.e.")) {
            return sentence.to_string();
        }
        from = end;
    }
    flat
}

pub(super) fn join_paragraphs(first: Option<String>, second: String) -> String {
    match first {
        Some(first) => format!("{first}\n\n{second}"),
        None => second,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::openapi::fixtures::library_document;
    use crate::proto::DESCRIPTOR_POOL;

    #[test]
    fn comments_come_from_the_source_info() {
        let id = DESCRIPTOR_POOL
            .get_message_by_name("user.User")
            .and_then(|m| m.get_field_by_name("id"))
            .expect("user.User.id");
        assert_eq!(field_comments(&id).as_deref(), Some("The user's id, assigned by the server. Output only."));
        let message = DESCRIPTOR_POOL.get_message_by_name("user.WatchUsersRequest").expect("message");
        assert_eq!(comments(&message.parent_file(), message.path()).as_deref(), Some("Request for WatchUsers."));

        let library = library_document();
        let book = &library["components"]["schemas"]["shelf.Book"];
        assert_eq!(book["description"], "A book on a shelf.");
        assert_eq!(book["properties"]["pageCount"]["description"], "Number of pages.");
        assert_eq!(
            book["properties"]["isbn10"]["description"],
            "At most one of `isbn10`, `isbn13` is set (oneof `identifier`).",
            "oneof members say so"
        );
        let genre = library["components"]["schemas"]["shelf.Genre"]["description"].as_str().expect("a description");
        assert!(genre.contains("- `GENRE_FICTION`: Stories."), "trailing comments count too: {genre}");
        let get_book = &library["paths"]["/v2/shelves/{shelf_id}/books/{book_id}"]["get"];
        assert_eq!(get_book["summary"], "Gets a book.");
        assert_eq!(get_book["description"], "Gets a book. Or fails.\n\nMore text.");
        assert!(
            library["paths"]["/v2/archive/{shelf_owner}/{book_id}"]["get"].get("summary").is_none(),
            "no comment, no summary"
        );
    }

    #[test]
    fn summaries_are_first_sentences() {
        let cases = [
            ("Returns one user by id. Fails with NOT_FOUND.", "Returns one user by id."),
            (
                "Lists users in id order, one page\nat a time. Pages are cursor based.",
                "Lists users in id order, one page at a time.",
            ),
            ("Takes options, e.g. a filter. Then more.", "Takes options, e.g. a filter."),
            ("No full stop at all", "No full stop at all"),
            ("First paragraph without a stop\n\nSecond paragraph.", "First paragraph without a stop"),
        ];
        for (text, expected) in cases {
            assert_eq!(summary(text), expected, "{text:?}");
        }
    }
}
