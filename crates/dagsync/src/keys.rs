//! Mapping S3 keys to paths under the destination, safely.
//!
//! A key is untrusted input: anyone who can write to the bucket can name a
//! key `../../etc/cron.d/x`. Only keys that map to a plain relative path made
//! of normal segments are accepted; everything else is rejected with a reason.

use std::path::PathBuf;

/// The folder inside the destination that dagsync owns (state, staging, locks).
pub const OWN_DIR: &str = ".dagsync";

/// Longest file-name segment Linux filesystems accept (NAME_MAX).
const NAME_MAX: usize = 255;

/// What a key (relative to the prefix) means for the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPath {
    /// A file at this relative path (segments joined by `/`).
    File(String),
    /// A directory marker (`folder/`) or the prefix itself: creates nothing.
    Marker,
}

/// Why a key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKey {
    /// A `..` or `.` segment.
    #[error("contains a '.' or '..' segment")]
    DotSegment,
    /// An empty segment (`a//b`) or a leading `/`.
    #[error("contains an empty segment or starts with '/'")]
    EmptySegment,
    /// A NUL byte.
    #[error("contains a NUL byte")]
    Nul,
    /// A segment longer than the filesystem allows.
    #[error("has a path segment longer than 255 bytes")]
    TooLong,
    /// It would land in dagsync's own folder.
    #[error("would write into dagsync's own folder {OWN_DIR}/")]
    Reserved,
}

/// Maps a key relative to the prefix to a destination path.
pub fn map_key(relative_key: &str) -> Result<KeyPath, InvalidKey> {
    if relative_key.is_empty() {
        return Ok(KeyPath::Marker);
    }
    if relative_key.contains('\0') {
        return Err(InvalidKey::Nul);
    }
    let (body, is_marker) = match relative_key.strip_suffix('/') {
        Some(body) => (body, true),
        None => (relative_key, false),
    };
    if body.is_empty() {
        // A lone "/" under the prefix: "prefix//" — an empty segment.
        return Err(InvalidKey::EmptySegment);
    }
    for (i, segment) in body.split('/').enumerate() {
        match segment {
            "" => return Err(InvalidKey::EmptySegment),
            "." | ".." => return Err(InvalidKey::DotSegment),
            s if s.len() > NAME_MAX => return Err(InvalidKey::TooLong),
            s if i == 0 && s == OWN_DIR => return Err(InvalidKey::Reserved),
            _ => {}
        }
    }
    if is_marker {
        Ok(KeyPath::Marker)
    } else {
        Ok(KeyPath::File(body.to_string()))
    }
}

/// Joins an accepted relative path onto the destination.
pub fn dest_path(dest: &std::path::Path, relative: &str) -> PathBuf {
    let mut p = dest.to_path_buf();
    for segment in relative.split('/') {
        p.push(segment);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    #[test]
    fn accepts_plain_nested_and_unicode_keys() {
        assert_eq!(map_key("a.py"), Ok(KeyPath::File("a.py".into())));
        assert_eq!(
            map_key("team/etl/dag_ü_日本.py"),
            Ok(KeyPath::File("team/etl/dag_ü_日本.py".into()))
        );
        assert_eq!(
            map_key(".airflowignore"),
            Ok(KeyPath::File(".airflowignore".into()))
        );
        assert_eq!(map_key("a..b/c"), Ok(KeyPath::File("a..b/c".into())));
    }

    #[test]
    fn markers_create_nothing() {
        assert_eq!(map_key(""), Ok(KeyPath::Marker));
        assert_eq!(map_key("folder/"), Ok(KeyPath::Marker));
        assert_eq!(map_key("a/b/"), Ok(KeyPath::Marker));
    }

    #[test]
    fn rejects_escapes_and_oddities() {
        assert_eq!(map_key("../x.py"), Err(InvalidKey::DotSegment));
        assert_eq!(map_key("a/../../x.py"), Err(InvalidKey::DotSegment));
        assert_eq!(map_key("a/./x.py"), Err(InvalidKey::DotSegment));
        assert_eq!(map_key("/etc/passwd"), Err(InvalidKey::EmptySegment));
        assert_eq!(map_key("a//b.py"), Err(InvalidKey::EmptySegment));
        assert_eq!(map_key("/"), Err(InvalidKey::EmptySegment));
        assert_eq!(map_key("a\0b"), Err(InvalidKey::Nul));
        assert_eq!(map_key(".dagsync/state.json"), Err(InvalidKey::Reserved));
        assert_eq!(map_key(&"x".repeat(256)), Err(InvalidKey::TooLong));
        assert_eq!(map_key("../"), Err(InvalidKey::DotSegment));
    }

    proptest! {
        /// Whatever the key, an accepted path stays strictly inside the destination
        /// and outside dagsync's own folder.
        #[test]
        fn accepted_paths_never_escape(key in "[a-z./\\\\\0é ]{0,24}") {
            if let Ok(KeyPath::File(rel)) = map_key(&key) {
                let p = dest_path(Path::new("/dest"), &rel);
                prop_assert!(p.starts_with("/dest"));
                prop_assert!(p != Path::new("/dest"));
                for c in Path::new(&rel).components() {
                    prop_assert!(matches!(c, Component::Normal(_)), "{:?} in {:?}", c, rel);
                }
                prop_assert!(!p.starts_with("/dest/.dagsync"));
                prop_assert_eq!(rel, key);
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(key in any::<String>()) {
            let _ = map_key(&key);
        }
    }
}
