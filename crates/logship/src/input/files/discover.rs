//! Finding files: the walks under each glob's literal base (at start, on every watch
//! event, every poll interval), the inotify watches, the paths found unreadable, and
//! following what is found under its identity.

use super::identity::{fingerprint, same_start, stream_id, whole_fingerprint};
use super::*;

/// Files and folders under the globs that logship cannot read, with why: shown on
/// `/readyz`'s body, counted, and logged once each.
#[derive(Debug, Clone, Default)]
pub struct Unreadable(Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>);

impl Unreadable {
    /// `/readyz` lines, one per unreadable path (empty when all can be read).
    pub fn describe(&self) -> String {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (path, why) in map.iter().take(20) {
            out.push_str(&format!("unreadable: {path} ({why})\n"));
        }
        if map.len() > 20 {
            out.push_str(&format!("unreadable: {} more\n", map.len() - 20));
        }
        out
    }

    /// The paths now unreadable.
    pub fn paths(&self) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.keys().cloned().collect()
    }

    /// Replaces the set with what the last walk found; logs each change once.
    fn update(&self, now: std::collections::BTreeMap<String, String>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (path, why) in &now {
            if !map.contains_key(path) {
                crate::telemetry::path_unreadable(path, why, nix_uid());
            }
        }
        for path in map.keys() {
            if !now.contains_key(path) {
                crate::telemetry::path_readable_again(path);
            }
        }
        *map = now;
        crate::telemetry::paths_unreadable(map.len());
    }
}

/// This process's uid, for the unreadable-file warning.
fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// The directory to walk for a glob: its components up to the first one with a
/// glob character (`/opt/airflow/logs/**/*.log` → `/opt/airflow/logs`).
pub fn glob_base(glob: &str) -> PathBuf {
    let mut base = PathBuf::new();
    let comps: Vec<&str> = glob.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        if c.contains(['*', '?', '[', '{']) || i == comps.len() - 1 {
            break;
        }
        if c.is_empty() && i == 0 {
            base.push("/");
        } else if !c.is_empty() {
            base.push(c);
        }
    }
    if base.as_os_str().is_empty() {
        base.push(".");
    }
    base
}

impl Tailer {
    /// Watches every base that exists and is not excluded by `--no-watch` (bases made
    /// later are watched by the walk after they appear).
    pub(super) fn ensure_watchers(&mut self) {
        for i in 0..self.bases.len() {
            let base = &self.bases[i];
            if self.watched[i]
                || self.watch_unavailable
                || self.settings.no_watch.iter().any(|d| base.starts_with(d))
                || !base.is_dir()
            {
                continue;
            }
            if self.watch.is_none() {
                match super::watch::Watch::new() {
                    Ok(w) => self.watch = Some(w),
                    Err(e) => {
                        tracing::warn!(error = %e, "no change events available; polling only");
                        self.watch_unavailable = true;
                        return;
                    }
                }
            }
            let watch = self.watch.as_mut().expect("made above");
            match watch.add_tree(base) {
                Ok(()) => {
                    tracing::info!(dir = %base.display(), "watching for change events");
                    self.watched[i] = true;
                }
                Err(e) => {
                    tracing::warn!(dir = %base.display(), error = %e, "cannot watch; polling only")
                }
            }
        }
    }

    pub(super) fn walk(&mut self, why: &'static str) {
        self.awaiting_first_line.clear();
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut found: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
        for base in &self.bases {
            let mut stack = vec![base.clone()];
            while let Some(dir) = stack.pop() {
                let rd = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(e) => {
                        // A base that does not exist (yet) is normal; anything else
                        // hides whatever logs are below it.
                        if e.kind() != std::io::ErrorKind::NotFound {
                            self.unreadable_now
                                .insert(dir.display().to_string(), e.to_string());
                        }
                        continue;
                    }
                };
                for ent in rd.flatten() {
                    let Ok(ft) = ent.file_type() else { continue };
                    let path = ent.path();
                    if ft.is_dir() {
                        stack.push(path);
                    } else if (ft.is_file() || ft.is_symlink())
                        && self.set.is_match(&path)
                        && let Ok(md) = std::fs::metadata(&path)
                        && md.is_file()
                    {
                        found.push((path, md));
                    }
                }
            }
        }
        for (path, md) in found {
            let key = (md.dev(), md.ino());
            seen.insert(key);
            self.found(path, &md, why);
        }
        self.settings
            .unreadable
            .update(std::mem::take(&mut self.unreadable_now));
        self.unterminated_since.retain(|k, _| seen.contains(k));
        for st in self.streams.values_mut() {
            if seen.contains(&(st.dev, st.ino)) {
                st.gone_since = None;
            } else if st.gone_since.is_none() {
                st.gone_since = Some(Instant::now());
            }
        }
        self.deferred.retain(|k, _| seen.contains(k));
        crate::telemetry::files_followed(self.streams.len());
    }

    pub(super) fn found(&mut self, path: PathBuf, md: &std::fs::Metadata, why: &'static str) {
        let key = (md.dev(), md.ino());
        if let Some(id) = self.by_inode.get(&key) {
            let st = self
                .streams
                .get_mut(id)
                .expect("by_inode points at a stream");
            st.path = path;
            if st.file.is_none()
                && md.len() != st.read_off
                && let Ok(f) = super::read::open_log(&st.path)
            {
                st.file = Some(f);
            }
            return;
        }
        let file = match super::read::open_log(&path) {
            Ok(f) => f,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    self.unreadable_now
                        .insert(path.display().to_string(), e.to_string());
                }
                return;
            }
        };
        match file.metadata() {
            Ok(m) if (m.dev(), m.ino()) == key => {}
            _ => return, // replaced between the walk and the open: next walk
        }
        let Some((fp, fp_len)) = fingerprint(&file, md.len()).or_else(|| {
            // No newline yet. A file whose only content is a line without a newline is
            // followed once it has been quiet for --multiline-timeout (as a held last
            // line is), or at shutdown: its fingerprint is then all of its bytes.
            let len = md.len();
            let since = self
                .unterminated_since
                .entry(key)
                .or_insert((len, Instant::now()));
            if since.0 != len {
                *since = (len, Instant::now());
            }
            let quiet = since.1.elapsed() >= self.settings.multiline_timeout;
            (len > 0 && (quiet || self.take_unterminated_now))
                .then(|| whole_fingerprint(&file, len))
                .flatten()
        }) else {
            self.awaiting_first_line.push(path);
            return;
        };
        self.unterminated_since.remove(&key);
        let now = Instant::now();
        let path_text = path.to_string_lossy().to_string();
        // 1. The same file as before a restart. (A file first fingerprinted while it
        //    held only an unterminated line has a shorter fingerprint than its first
        //    line now: its first bytes decide.)
        if let Some(e) = self.restored.remove(&key) {
            let same = (e.fp == fp && e.fp_len == fp_len)
                || (e.fp_len < fp_len && same_start(&file, e.fp, e.fp_len));
            if same {
                let (fp, fp_len) = (e.fp, e.fp_len);
                let meta = Arc::new(FileMeta::new(&e.path, e.id, self.ecs.as_ref()));
                crate::telemetry::file_resumed(&path_text, e.offset, why);
                self.follow(
                    e.id,
                    key,
                    fp,
                    fp_len,
                    e.generation,
                    path,
                    meta,
                    file,
                    e.offset,
                );
                return;
            }
            // The inode was reused for a new file.
            self.ledger.remove(e.id);
        }
        // 2. A copy of a file that was truncated (copytruncate): continue where it stopped.
        let adopt = self
            .retired
            .iter()
            .find(|(_, r)| r.fp == fp && r.fp_len == fp_len && (r.dev, r.ino) != key)
            .map(|(id, _)| *id);
        if let Some(id) = adopt {
            let r = self.retired.remove(&id).expect("found above");
            crate::telemetry::file_copy_continued(&path_text, r.resume, why);
            self.follow(
                id,
                key,
                fp,
                fp_len,
                r.generation,
                path,
                r.meta,
                file,
                r.resume,
            );
            return;
        }
        // 3. Same first line as a followed file: perhaps a copy about to become the
        //    continuation of a truncated file. Give the truncation a moment to show.
        let twin = self
            .streams
            .values()
            .any(|s| s.fp == fp && s.fp_len == fp_len);
        if twin {
            let first = *self.deferred.entry(key).or_insert(now);
            let settle = (self.settings.poll_interval * 3).max(Duration::from_secs(2));
            if now.duration_since(first) < settle {
                return;
            }
        }
        // 4. A new file.
        let generation = self.generations.get(&key).copied().unwrap_or(0);
        let id = stream_id(key.0, key.1, fp, generation);
        let meta = Arc::new(FileMeta::new(&path_text, id, self.ecs.as_ref()));
        crate::telemetry::file_followed(&path_text, &meta.id_hex, why);
        self.follow(id, key, fp, fp_len, generation, path, meta, file, 0);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn follow(
        &mut self,
        id: u64,
        key: (u64, u64),
        fp: u64,
        fp_len: u32,
        generation: u32,
        path: PathBuf,
        meta: Arc<FileMeta>,
        file: File,
        offset: u64,
    ) {
        self.ledger.register(Entry {
            id,
            dev: key.0,
            ino: key.1,
            fp,
            fp_len,
            generation,
            path: meta.path.clone(),
            offset,
            retired: false,
        });
        let now = Instant::now();
        self.by_inode.insert(key, id);
        self.streams.insert(
            id,
            Stream {
                id,
                dev: key.0,
                ino: key.1,
                fp,
                fp_len,
                generation,
                path,
                meta,
                file: Some(file),
                read_off: offset,
                line_start: offset,
                partial: Vec::new(),
                asm: Assembler::default(),
                records: self.settings.records,
                last_data: now,
                gone_since: None,
                raw: Vec::new(),
                raw_base: offset,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_of_globs() {
        assert_eq!(
            glob_base("/opt/airflow/logs/**/*.log"),
            PathBuf::from("/opt/airflow/logs")
        );
        assert_eq!(glob_base("/var/log/app.log"), PathBuf::from("/var/log"));
        assert_eq!(glob_base("logs/*.log"), PathBuf::from("logs"));
        assert_eq!(glob_base("*.log"), PathBuf::from("."));
    }
}
