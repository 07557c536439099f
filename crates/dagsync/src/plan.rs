//! Deciding what a cycle does, from one listing, the state and local `stat`s.
//!
//! [`plan`] is a pure function so that the safety rules (what may be deleted,
//! when deleting is refused) are tested without any I/O.

use std::collections::HashSet;
use std::fmt;

use globset::GlobSet;

use crate::keys::{KeyPath, map_key};
use crate::source::RemoteObject;
use crate::state::{State, nanos};

/// What a file on disk looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalFile {
    /// Size in bytes.
    pub size: u64,
    /// mtime, nanoseconds since the epoch.
    pub mtime_ns: u128,
}

/// The `--max-delete` limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeleteLimit {
    /// At most this many files per cycle.
    Count(u64),
    /// At most this share (percent) of the files dagsync has synced.
    Percent(f64),
}

impl DeleteLimit {
    /// Parses `N` or `N%`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let bad =
            || format!("invalid --max-delete {text:?}: use a count (100) or a percentage (50%)");
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&v) {
                return Err(bad());
            }
            Ok(DeleteLimit::Percent(v))
        } else {
            Ok(DeleteLimit::Count(t.parse().map_err(|_| bad())?))
        }
    }

    /// The largest number of deletions allowed when `synced` files are tracked.
    pub fn allowed(&self, synced: usize) -> u64 {
        match *self {
            DeleteLimit::Count(n) => n,
            DeleteLimit::Percent(p) => ((synced as f64) * p / 100.0).floor() as u64,
        }
    }
}

impl fmt::Display for DeleteLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeleteLimit::Count(n) => write!(f, "{n}"),
            DeleteLimit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Why an object is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchReason {
    /// Not synced before.
    Added,
    /// A new ETag or size.
    Changed,
    /// Unchanged upstream, but the local file is missing or differs from what dagsync wrote.
    Repair,
}

/// Why deletions were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The listing is empty although files were synced before.
    EmptyListing {
        /// Files synced before.
        synced: usize,
    },
    /// More deletions than --max-delete allows.
    TooMany {
        /// Deletions the plan wanted.
        wanted: usize,
        /// Deletions allowed.
        allowed: u64,
        /// The limit as configured.
        limit: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::EmptyListing { synced } => write!(
                f,
                "the source listing is empty but {synced} files were synced before; refusing to delete them (remove the state file to start over if this is intended)"
            ),
            Refusal::TooMany {
                wanted,
                allowed,
                limit,
            } => write!(
                f,
                "{wanted} files would be deleted but --max-delete {limit} allows {allowed}; refusing (raise --max-delete if this is intended)"
            ),
        }
    }
}

/// One cycle's plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Objects to download, with why.
    pub fetch: Vec<(String, RemoteObject, FetchReason)>,
    /// Relative paths to delete (dagsync-placed files whose keys left the listing).
    pub delete: Vec<String>,
    /// Paths that would have been deleted but were refused.
    pub refused_paths: Vec<String>,
    /// Why deletions were refused, if they were.
    pub refused: Option<Refusal>,
    /// Keys skipped as unsafe or conflicting, with the reason.
    pub invalid: Vec<(String, String)>,
    /// State entries now excluded by --exclude: forgotten, their files left alone.
    pub forget: Vec<String>,
    /// Files already in place.
    pub unchanged: usize,
}

impl Plan {
    /// Whether the cycle changes anything on disk.
    pub fn is_noop(&self) -> bool {
        self.fetch.is_empty() && self.delete.is_empty()
    }

    /// The dry-run rendering: `+ added`, `~ changed`, `- deleted`, `! refused or invalid`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (path, obj, reason) in &self.fetch {
            match reason {
                FetchReason::Added => out.push_str(&format!("+ {path} ({} bytes)\n", obj.size)),
                FetchReason::Changed => out.push_str(&format!("~ {path} ({} bytes)\n", obj.size)),
                FetchReason::Repair => out.push_str(&format!(
                    "~ {path} (repair: the local file differs from what dagsync wrote)\n"
                )),
            }
        }
        for path in &self.delete {
            out.push_str(&format!("- {path}\n"));
        }
        for path in &self.refused_paths {
            out.push_str(&format!("! {path} (deletion refused)\n"));
        }
        for (key, why) in &self.invalid {
            out.push_str(&format!("! {key:?} (skipped: {why})\n"));
        }
        if let Some(r) = &self.refused {
            out.push_str(&format!("! deletions refused: {r}\n"));
        }
        out.push_str(&format!(
            "plan: {} to fetch, {} to delete, {} unchanged, {} refused, {} skipped\n",
            self.fetch.len(),
            self.delete.len(),
            self.unchanged,
            self.refused_paths.len(),
            self.invalid.len()
        ));
        out
    }
}

/// Plans one cycle. `stat` reports the local file at a relative path, if any.
pub fn plan(
    listing: &[RemoteObject],
    state: &State,
    exclude: &GlobSet,
    limit: DeleteLimit,
    stat: impl Fn(&str) -> Option<LocalFile>,
) -> Plan {
    let mut p = Plan::default();
    let mut wanted: Vec<(String, &RemoteObject)> = Vec::with_capacity(listing.len());
    for obj in listing {
        match map_key(&obj.rel_key) {
            Ok(KeyPath::Marker) => {}
            Ok(KeyPath::File(path)) => {
                if !exclude.is_match(&path) {
                    wanted.push((path, obj));
                }
            }
            Err(why) => p.invalid.push((obj.rel_key.clone(), why.to_string())),
        }
    }
    // A key "a" and a key "a/b" cannot both exist on a filesystem: keep the file, skip the
    // deeper key (S3 allows both; POSIX does not).
    let files: HashSet<&str> = wanted.iter().map(|(p, _)| p.as_str()).collect();
    let mut conflicting = HashSet::new();
    for (path, _) in &wanted {
        for (i, _) in path.match_indices('/') {
            if files.contains(&path[..i]) {
                p.invalid.push((
                    path.clone(),
                    format!("conflicts with the file {:?}", &path[..i]),
                ));
                conflicting.insert(path.clone());
                break;
            }
        }
    }
    wanted.retain(|(path, _)| !conflicting.contains(path));

    let listed: HashSet<&str> = wanted.iter().map(|(p, _)| p.as_str()).collect();
    for (path, obj) in &wanted {
        let reason = match state.files.get(path) {
            None => Some(FetchReason::Added),
            Some(e) if e.etag != obj.etag || e.size != obj.size => Some(FetchReason::Changed),
            Some(e) => match stat(path) {
                Some(l) if l.size == e.size && l.mtime_ns == e.mtime_ns => None,
                _ => Some(FetchReason::Repair),
            },
        };
        match reason {
            Some(r) => p.fetch.push((path.clone(), (*obj).clone(), r)),
            None => p.unchanged += 1,
        }
    }

    let mut delete = Vec::new();
    for path in state.files.keys() {
        if listed.contains(path.as_str()) {
            continue;
        }
        if exclude.is_match(path) {
            p.forget.push(path.clone());
        } else {
            delete.push(path.clone());
        }
    }
    let synced = state.files.len();
    if !delete.is_empty() {
        let refusal = if listed.is_empty() && synced > 0 {
            Some(Refusal::EmptyListing { synced })
        } else if delete.len() as u64 > limit.allowed(synced) {
            Some(Refusal::TooMany {
                wanted: delete.len(),
                allowed: limit.allowed(synced),
                limit: limit.to_string(),
            })
        } else {
            None
        };
        match refusal {
            Some(r) => {
                p.refused = Some(r);
                p.refused_paths = delete;
            }
            None => p.delete = delete,
        }
    }
    p
}

/// Stats a local file for [`plan`].
pub fn stat_local(path: &std::path::Path) -> Option<LocalFile> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    Some(LocalFile {
        size: meta.len(),
        mtime_ns: meta.modified().map(nanos).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Entry;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};
    use std::time::{Duration, UNIX_EPOCH};

    fn obj(key: &str, etag: &str, size: u64) -> RemoteObject {
        RemoteObject {
            rel_key: key.into(),
            etag: etag.into(),
            size,
            last_modified: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    fn state_of(entries: &[(&str, &str, u64)]) -> State {
        let mut s = State::new();
        for (p, e, size) in entries {
            s.files.insert(
                p.to_string(),
                Entry {
                    etag: e.to_string(),
                    size: *size,
                    mtime_ns: 7,
                },
            );
        }
        s
    }

    fn on_disk(s: &State) -> HashMap<String, LocalFile> {
        s.files
            .iter()
            .map(|(p, e)| {
                (
                    p.clone(),
                    LocalFile {
                        size: e.size,
                        mtime_ns: e.mtime_ns,
                    },
                )
            })
            .collect()
    }

    fn none() -> GlobSet {
        GlobSet::empty()
    }

    #[test]
    fn same_size_edit_is_a_change() {
        let s = state_of(&[("a.py", "e1", 10)]);
        let disk = on_disk(&s);
        let p = plan(
            &[obj("a.py", "e2", 10)],
            &s,
            &none(),
            DeleteLimit::Percent(50.0),
            |k| disk.get(k).copied(),
        );
        assert_eq!(p.fetch.len(), 1);
        assert_eq!(p.fetch[0].2, FetchReason::Changed);
    }

    #[test]
    fn unchanged_needs_no_fetch_and_local_edits_are_repaired() {
        let s = state_of(&[("a.py", "e1", 10), ("b.py", "e2", 5)]);
        let mut disk = on_disk(&s);
        let listing = [obj("a.py", "e1", 10), obj("b.py", "e2", 5)];
        let p = plan(&listing, &s, &none(), DeleteLimit::Count(0), |k| {
            disk.get(k).copied()
        });
        assert!(p.is_noop());
        assert_eq!(p.unchanged, 2);
        disk.get_mut("b.py").unwrap().mtime_ns = 8;
        disk.remove("a.py");
        let p = plan(&listing, &s, &none(), DeleteLimit::Count(0), |k| {
            disk.get(k).copied()
        });
        assert_eq!(
            p.fetch
                .iter()
                .filter(|f| f.2 == FetchReason::Repair)
                .count(),
            2
        );
    }

    #[test]
    fn deletes_only_what_dagsync_placed() {
        let s = state_of(&[("a.py", "e1", 1), ("gone.py", "e2", 1), ("x/y.py", "e", 1)]);
        let disk = on_disk(&s);
        let p = plan(
            &[obj("a.py", "e1", 1), obj("x/y.py", "e", 1)],
            &s,
            &none(),
            DeleteLimit::Percent(50.0),
            |k| disk.get(k).copied(),
        );
        assert_eq!(p.delete, vec!["gone.py".to_string()]);
        assert!(p.refused.is_none());
    }

    #[test]
    fn empty_listing_refuses_all_deletions() {
        let s = state_of(&[("a.py", "e1", 1)]);
        let p = plan(&[], &s, &none(), DeleteLimit::Percent(100.0), |_| None);
        assert!(p.delete.is_empty());
        assert_eq!(p.refused, Some(Refusal::EmptyListing { synced: 1 }));
        assert_eq!(p.refused_paths, vec!["a.py".to_string()]);
        // Markers only still count as empty.
        let p = plan(
            &[obj("folder/", "m", 0)],
            &s,
            &none(),
            DeleteLimit::Percent(100.0),
            |_| None,
        );
        assert!(matches!(p.refused, Some(Refusal::EmptyListing { .. })));
    }

    #[test]
    fn over_cap_refuses_all_deletions() {
        let s = state_of(&[("a", "e", 1), ("b", "e", 1), ("c", "e", 1), ("d", "e", 1)]);
        let disk = on_disk(&s);
        let p = plan(
            &[obj("a", "e", 1)],
            &s,
            &none(),
            DeleteLimit::Count(2),
            |k| disk.get(k).copied(),
        );
        assert!(p.delete.is_empty());
        assert!(matches!(
            p.refused,
            Some(Refusal::TooMany {
                wanted: 3,
                allowed: 2,
                ..
            })
        ));
        let p = plan(
            &[obj("a", "e", 1)],
            &s,
            &none(),
            DeleteLimit::Count(3),
            |k| disk.get(k).copied(),
        );
        assert_eq!(p.delete.len(), 3);
        let p = plan(
            &[obj("a", "e", 1)],
            &s,
            &none(),
            DeleteLimit::Percent(50.0),
            |k| disk.get(k).copied(),
        );
        assert!(p.refused.is_some());
    }

    #[test]
    fn invalid_markers_and_conflicts() {
        let listing = [
            obj("../evil.py", "e", 1),
            obj("dir/", "e", 0),
            obj("a", "e", 1),
            obj("a/b.py", "e", 1),
            obj("ok.py", "e", 1),
        ];
        let p = plan(
            &listing,
            &State::new(),
            &none(),
            DeleteLimit::Count(0),
            |_| None,
        );
        let fetched: Vec<_> = p.fetch.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(fetched, vec!["a", "ok.py"]);
        assert_eq!(p.invalid.len(), 2);
    }

    #[test]
    fn excluded_paths_are_neither_fetched_nor_deleted() {
        let mut b = globset::GlobSetBuilder::new();
        b.add(globset::Glob::new("**/*.md").unwrap());
        let ex = b.build().unwrap();
        let s = state_of(&[("docs/readme.md", "e", 1)]);
        let p = plan(
            &[obj("docs/readme.md", "e2", 1), obj("a.py", "e", 1)],
            &s,
            &ex,
            DeleteLimit::Count(0),
            |_| None,
        );
        assert_eq!(p.fetch.len(), 1);
        assert!(p.delete.is_empty());
        assert_eq!(p.forget, vec!["docs/readme.md".to_string()]);
    }

    #[test]
    fn limits_parse() {
        assert_eq!(DeleteLimit::parse("10").unwrap(), DeleteLimit::Count(10));
        assert_eq!(
            DeleteLimit::parse("25%").unwrap(),
            DeleteLimit::Percent(25.0)
        );
        assert!(DeleteLimit::parse("150%").is_err());
        assert!(DeleteLimit::parse("lots").is_err());
        assert_eq!(DeleteLimit::Percent(50.0).allowed(5), 2);
    }

    proptest! {
        /// Reference model: whatever the listing and state, a plan never deletes a path that
        /// dagsync did not place, never deletes a path still listed, never deletes more than
        /// allowed, and fetches every listed valid path whose state differs.
        #[test]
        fn plan_respects_the_safety_rules(
            listed in proptest::collection::btree_map("[a-c]{1,2}(/[a-c]{1,2})?", (0u8..3, 0u64..3), 0..12),
            synced in proptest::collection::btree_map("[a-c]{1,2}(/[a-c]{1,2})?", (0u8..3, 0u64..3), 0..12),
            limit in 0u64..6,
        ) {
            let listing: Vec<_> = listed.iter().map(|(k, (e, s))| obj(k, &format!("e{e}"), *s)).collect();
            let mut state = State::new();
            for (k, (e, s)) in &synced {
                state.files.insert(k.clone(), Entry { etag: format!("e{e}"), size: *s, mtime_ns: 7 });
            }
            let disk = on_disk(&state);
            let p = plan(&listing, &state, &none(), DeleteLimit::Count(limit), |k| disk.get(k).copied());
            let fetched: HashSet<_> = p.fetch.iter().map(|f| f.0.clone()).collect();
            let valid: BTreeMap<_, _> = listed.iter()
                .filter(|(k, _)| !p.invalid.iter().any(|(ik, _)| ik == *k))
                .collect();
            for d in &p.delete {
                prop_assert!(synced.contains_key(d));
                prop_assert!(!valid.contains_key(d));
            }
            prop_assert!(p.delete.len() as u64 <= limit);
            if valid.is_empty() && !synced.is_empty() {
                prop_assert!(p.delete.is_empty());
            }
            for (k, (e, s)) in &valid {
                let same = synced.get(*k).is_some_and(|(e2, s2)| e2 == e && s2 == s);
                prop_assert_eq!(fetched.contains(*k), !same, "{}", k);
            }
        }
    }
}
