//! S3 keys are untrusted: whatever a key is, mapping it never panics, and an accepted path
//! is made of normal segments only (so it cannot leave --dest or enter .dagsync/).
#![no_main]

use std::path::{Component, Path};

use dagsync::keys::{KeyPath, map_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(KeyPath::File(rel)) = map_key(key) {
        assert!(!rel.is_empty());
        for c in Path::new(&rel).components() {
            assert!(matches!(c, Component::Normal(_)), "{key:?} -> {rel:?}");
        }
        assert!(!rel.starts_with(".dagsync/") && rel != ".dagsync");
    }
});
