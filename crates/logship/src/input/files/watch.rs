//! Structural change events from inotify: a file or folder created, removed or
//! renamed somewhere under a watched base, which makes the tailer walk at once instead
//! of at the next poll.
//!
//! Data events (`IN_MODIFY`) are left out of the watch on purpose. A busy worker writes
//! to hundreds of task logs many times a second, and one event per write (a wake-up, a
//! read of the event queue, a path looked up) cost more than reading the files did: in
//! `bench/logship/run-airflow.sh`, 200 logs gaining 20 lines a second each sent 4,000
//! events a second. Followed files are instead looked at every `--read-interval`: one
//! `fstat` per file, and a read only of the files that grew.
//!
//! inotify watches one folder, not a tree, so every folder under a base gets its own
//! watch, and a folder created later gets one as soon as its creation is seen (Airflow
//! makes `dag_id=…/run_id=…/task_id=…` folders as tasks start). A file created in a new
//! folder before its watch was added is found by the walk that the folder's creation
//! triggers.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};

/// What the tailer watches for: entries appearing, going away or being renamed, in a
/// folder or of the folder itself; and permission changes (a file or folder that could
/// not be read may be readable now; writes do not change attributes).
fn mask() -> WatchMask {
    WatchMask::ATTRIB
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// The inotify instance of one tailer and the folders it watches.
pub(super) struct Watch {
    watches: Watches,
    events: EventStream<Vec<u8>>,
    /// Each watched folder by its descriptor, to find where a new folder was made.
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

/// What a batch of events asks of the tailer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Seen {
    /// Something was created, removed or renamed: walk.
    pub walk: bool,
    /// A watched base itself went away: watch it again when it comes back.
    pub base_gone: bool,
}

impl Watch {
    /// Starts an inotify instance; needs a Tokio runtime (the events arrive through its
    /// reactor, with no thread of their own).
    pub(super) fn new() -> std::io::Result<Self> {
        let inotify = Inotify::init()?;
        let watches = inotify.watches();
        let events = inotify.into_event_stream(vec![0u8; 16 * 1024])?;
        Ok(Self {
            watches,
            events,
            dirs: HashMap::new(),
        })
    }

    /// Watches `base` and every folder under it. Fails only if `base` itself cannot be
    /// watched; a subfolder that cannot be is left to the polls.
    pub(super) fn add_tree(&mut self, base: &Path) -> std::io::Result<()> {
        let wd = self.watches.add(base, mask())?;
        self.dirs.insert(wd, base.to_path_buf());
        self.add_children(base);
        Ok(())
    }

    fn add_children(&mut self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            // Not followed through symlinks: a link to a folder could loop.
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let path = e.path();
                match self.watches.add(&path, mask()) {
                    Ok(wd) => {
                        self.dirs.insert(wd, path.clone());
                        self.add_children(&path);
                    }
                    Err(e) => {
                        tracing::debug!(dir = %path.display(), error = %e, "cannot watch; polled")
                    }
                }
            }
        }
    }

    /// Waits for the next event, then takes every other event already queued, adding
    /// watches for new folders. `None` when the instance stopped delivering events.
    pub(super) async fn next(&mut self) -> Option<Seen> {
        let first = self.events.next().await?;
        let mut seen = Seen::default();
        self.take(first, &mut seen);
        while let Some(Some(ev)) = futures::FutureExt::now_or_never(self.events.next()) {
            self.take(ev, &mut seen);
        }
        Some(seen)
    }

    fn take(&mut self, ev: std::io::Result<inotify::Event<OsString>>, seen: &mut Seen) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "reading change events failed; walking");
                seen.walk = true;
                return;
            }
        };
        crate::telemetry::watch_event();
        tracing::trace!(mask = ?ev.mask, name = ?ev.name, "change event");
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            // Events were lost: a walk finds whatever they would have said.
            seen.walk = true;
            return;
        }
        if ev
            .mask
            .intersects(EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF)
        {
            // The folder went away, was renamed or unmounted: its path is not watched
            // any more. (A removed folder's own IGNORED waits until nothing holds it,
            // which an open file inside it does; so DELETE_SELF and MOVE_SELF count.)
            if let Some(dir) = self.dirs.remove(&ev.wd) {
                tracing::debug!(dir = %dir.display(), "no longer watched");
                if !ev.mask.contains(EventMask::IGNORED) {
                    let _ = self.watches.remove(ev.wd);
                }
            }
            seen.walk = true;
            seen.base_gone = true;
            return;
        }
        seen.walk = true;
        if ev.mask.contains(EventMask::ISDIR)
            && ev
                .mask
                .intersects(EventMask::CREATE | EventMask::MOVED_TO | EventMask::ATTRIB)
            && let (Some(parent), Some(name)) = (self.dirs.get(&ev.wd), ev.name)
        {
            let path = parent.join(name);
            // A folder whose permissions changed may be watchable now.
            if ev.mask.contains(EventMask::ATTRIB) && self.watches_dir(&path) {
                return;
            }
            if let Ok(wd) = self.watches.add(&path, mask()) {
                self.dirs.insert(wd, path.clone());
                // `mkdir -p` makes the whole chain before the first event is read.
                self.add_children(&path);
            }
        }
    }

    /// Whether `dir` has a live watch.
    pub(super) fn watches_dir(&self, dir: &Path) -> bool {
        self.dirs.values().any(|d| d == dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn seen_within(w: &mut Watch, ms: u64) -> Option<Seen> {
        tokio::time::timeout(Duration::from_millis(ms), w.next())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn new_folders_are_watched_and_writes_are_not_events() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("logs");
        std::fs::create_dir_all(base.join("dag_id=a")).unwrap();
        let mut w = Watch::new().unwrap();
        w.add_tree(&base).unwrap();
        assert!(w.watches_dir(&base.join("dag_id=a")));

        // A chain made at once: every level is watched, and a file created at the
        // bottom afterwards is an event.
        let deep = base.join("dag_id=b/run_id=r/task_id=t");
        std::fs::create_dir_all(&deep).unwrap();
        assert!(seen_within(&mut w, 2000).await.unwrap().walk);
        assert!(
            w.watches_dir(&deep),
            "{:?}",
            w.dirs.values().collect::<Vec<_>>()
        );
        let log = deep.join("attempt=1.log");
        std::fs::write(&log, "first\n").unwrap();
        assert!(seen_within(&mut w, 2000).await.unwrap().walk);

        // Appending is not an event: the tailer reads grown files on its own clock.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        for _ in 0..100 {
            f.write_all(b"more\n").unwrap();
        }
        assert_eq!(seen_within(&mut w, 300).await, None);

        // A rename and a removal are.
        drop(f);
        // (Closed first: an open file keeps its folders' inodes, and with them the
        // kernel's notice that they were removed, which the last step waits for.)
        std::fs::rename(&log, deep.join("attempt=1.log.1")).unwrap();
        assert!(seen_within(&mut w, 2000).await.unwrap().walk);
        std::fs::remove_file(deep.join("attempt=1.log.1")).unwrap();
        assert!(seen_within(&mut w, 2000).await.unwrap().walk);

        // The base going away is said, so that it is watched again when it returns.
        std::fs::remove_dir_all(&base).unwrap();
        let mut gone = false;
        while let Some(s) = seen_within(&mut w, 1000).await {
            gone |= s.base_gone;
        }
        assert!(gone);
        assert!(!w.watches_dir(&base));
    }
}
