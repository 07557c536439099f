//! Publishing a verified batch: rename every staged file into place, then
//! delete, then prune folders that became empty.
//!
//! Renames within one filesystem are atomic, so a reader sees either the old or
//! the new version of each file; the tree is a mix of old and new only while the
//! rename loop runs. Deletions come after the renames so a DAG moved from one
//! file to another is never missing in between.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use crate::keys::dest_path;
use crate::state::{Entry, State};

/// A downloaded, verified file waiting to be published.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The relative destination path.
    pub path: String,
    /// Where it is staged.
    pub staged: PathBuf,
    /// What the state records once it is in place.
    pub entry: Entry,
}

/// What a publish did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    /// Files renamed into place.
    pub renamed: usize,
    /// Files deleted.
    pub deleted: usize,
    /// Empty folders removed.
    pub pruned: usize,
    /// Files that could not be published or deleted, with why.
    pub failed: Vec<(String, String)>,
}

/// Publishes `staged` and deletes `delete`, updating `state` for every success.
pub fn publish(
    dest: &Path,
    staged: Vec<Staged>,
    delete: &[String],
    state: &mut State,
) -> Published {
    let mut out = Published::default();
    // Folders made (or found) in this batch: on EFS every mkdir and stat is a round trip
    // to the file server, and a full sync used to make one mkdir and two stats per file.
    let mut folders: HashSet<PathBuf> = HashSet::new();
    for s in staged {
        let target = dest_path(dest, &s.path);
        let result = (|| -> std::io::Result<()> {
            let parent = target.parent().unwrap_or(dest);
            if !folders.contains(parent) {
                std::fs::create_dir_all(parent)?;
                folders.insert(parent.to_path_buf());
            }
            match std::fs::rename(&s.staged, &target) {
                // Removed since we made it (another process pruning it): make it again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(parent)?;
                    std::fs::rename(&s.staged, &target)
                }
                other => other,
            }
            .map_err(|e| match e.kind() {
                // rename(2) will not put a file over a folder (EISDIR).
                std::io::ErrorKind::IsADirectory | std::io::ErrorKind::DirectoryNotEmpty => {
                    std::io::Error::other(
                        "a folder exists at this path; remove it or rename the key",
                    )
                }
                _ => e,
            })
        })();
        match result {
            Ok(()) => {
                out.renamed += 1;
                state.files.insert(s.path, s.entry);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&s.staged);
                out.failed.push((s.path, e.to_string()));
            }
        }
    }
    let mut parents = BTreeSet::new();
    for path in delete {
        let target = dest_path(dest, path);
        match std::fs::remove_file(&target) {
            Ok(()) => out.deleted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                out.failed.push((path.clone(), e.to_string()));
                continue;
            }
        }
        state.files.remove(path);
        if let Some(parent) = target.parent() {
            parents.insert(parent.to_path_buf());
        }
    }
    // Deepest first, walking up until a folder is not empty (for example because it
    // holds Airflow's __pycache__ or a file written by hand).
    let mut ordered: Vec<_> = parents.into_iter().collect();
    ordered.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for mut dir in ordered {
        while dir.starts_with(dest) && dir != dest {
            if std::fs::remove_dir(&dir).is_err() {
                break;
            }
            out.pruned += 1;
            match dir.parent() {
                Some(p) => dir = p.to_path_buf(),
                None => break,
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_deletes_and_prunes_but_keeps_foreign_files() {
        let dest = tempfile::tempdir().unwrap();
        let stage = tempfile::tempdir_in(dest.path()).unwrap();
        let d = dest.path();
        std::fs::create_dir_all(d.join("old/deep")).unwrap();
        std::fs::write(d.join("old/deep/x.py"), b"x").unwrap();
        std::fs::create_dir_all(d.join("keep/__pycache__")).unwrap();
        std::fs::write(d.join("keep/y.py"), b"y").unwrap();
        std::fs::write(d.join("keep/__pycache__/y.pyc"), b"c").unwrap();
        let mut state = State::new();
        let e = Entry {
            etag: "e".into(),
            size: 1,
            mtime_ns: 0,
        };
        state.files.insert("old/deep/x.py".into(), e.clone());
        state.files.insert("keep/y.py".into(), e.clone());
        let staged_path = stage.path().join("0.part");
        std::fs::write(&staged_path, b"new").unwrap();
        let out = publish(
            d,
            vec![Staged {
                path: "new/z.py".into(),
                staged: staged_path,
                entry: e.clone(),
            }],
            &["old/deep/x.py".into(), "keep/y.py".into()],
            &mut state,
        );
        assert_eq!((out.renamed, out.deleted, out.pruned), (1, 2, 2));
        assert_eq!(std::fs::read(d.join("new/z.py")).unwrap(), b"new");
        assert!(!d.join("old").exists());
        assert!(d.join("keep/__pycache__/y.pyc").exists());
        assert_eq!(state.files.keys().collect::<Vec<_>>(), vec!["new/z.py"]);
    }

    #[test]
    fn a_folder_in_the_way_fails_that_file_only() {
        let dest = tempfile::tempdir().unwrap();
        let stage = tempfile::tempdir_in(dest.path()).unwrap();
        let d = dest.path();
        std::fs::create_dir_all(d.join("team/dag.py/inner")).unwrap();
        let e = Entry {
            etag: "e".into(),
            size: 1,
            mtime_ns: 0,
        };
        let staged = |name: &str, path: &str| {
            let p = stage.path().join(name);
            std::fs::write(&p, name).unwrap();
            Staged {
                path: path.into(),
                staged: p,
                entry: e.clone(),
            }
        };
        let mut state = State::new();
        let out = publish(
            d,
            vec![
                staged("0.part", "team/dag.py"),
                staged("1.part", "team/other.py"),
                staged("2.part", "team/sub/third.py"),
            ],
            &[],
            &mut state,
        );
        assert_eq!(out.renamed, 2);
        assert_eq!(out.failed.len(), 1);
        assert_eq!(out.failed[0].0, "team/dag.py");
        assert!(
            out.failed[0].1.contains("a folder exists"),
            "{:?}",
            out.failed
        );
        assert!(
            d.join("team/dag.py/inner").is_dir(),
            "the folder is left alone"
        );
        assert!(
            !stage.path().join("0.part").exists(),
            "the staged file is removed"
        );
        assert_eq!(std::fs::read(d.join("team/other.py")).unwrap(), b"1.part");
        assert_eq!(
            std::fs::read(d.join("team/sub/third.py")).unwrap(),
            b"2.part"
        );
        assert_eq!(
            state.files.keys().collect::<Vec<_>>(),
            vec!["team/other.py", "team/sub/third.py"]
        );
    }
}
