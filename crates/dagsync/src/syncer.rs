//! One sync cycle: list → plan → fetch into staging → publish → save state.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use airside_core::aws::ErrorClass;
use futures::StreamExt;

use crate::config::Config;
use crate::plan::{Plan, Refusal, plan, stat_local};
use crate::publish::{Staged, publish};
use crate::source::{RemoteObject, Source, SourceError};
use crate::staging::Staging;
use crate::state::{Entry, State, nanos};
use crate::telemetry;

/// What one cycle did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CycleReport {
    /// Objects listed (including markers and invalid keys).
    pub listed: usize,
    /// Files downloaded and published.
    pub downloaded: usize,
    /// Bytes downloaded this cycle.
    pub bytes: u64,
    /// Of this cycle's downloads, those that went through the AWS SDK's GetObject (the
    /// direct path was off, did not apply, or failed and was repeated).
    pub via_sdk: usize,
    /// Files deleted.
    pub deleted: usize,
    /// Empty folders removed.
    pub pruned: usize,
    /// Files already in place.
    pub unchanged: usize,
    /// Keys skipped as unsafe.
    pub invalid: usize,
    /// Why deletions were refused, if they were.
    pub refused: Option<Refusal>,
    /// Deletions refused.
    pub refused_count: usize,
    /// The plan, rendered, for --dry-run.
    pub dry_run_plan: Option<String>,
    /// Objects that could not be fetched or verified this cycle: `(key, reason label,
    /// error)`. Their files keep their previous version (or stay absent) and are tried
    /// again next cycle; everything else was published.
    pub failed: Vec<FailedObject>,
}

/// One object that could not be fetched or verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedObject {
    /// The key relative to the prefix.
    pub key: String,
    /// `integrity`, `access_denied`, `not_found`, `changed` or `transient` (the `reason`
    /// label of `dagsync_object_failures_total`).
    pub reason: &'static str,
    /// The error, for logs and /readyz.
    pub error: String,
}

impl FailedObject {
    fn new(key: String, e: &SourceError) -> Self {
        let reason = match e {
            SourceError::Integrity { .. } => "integrity",
            SourceError::Changed { .. } => "changed",
            e => match e.class() {
                ErrorClass::AccessDenied => "access_denied",
                ErrorClass::NotFound => "not_found",
                _ => "transient",
            },
        };
        Self {
            key,
            reason,
            error: e.to_string(),
        }
    }

    /// Whether the failure belongs to this object alone (its key, its KMS key, its
    /// bytes), rather than to the connection to S3 as a whole.
    pub fn object_specific(&self) -> bool {
        self.reason != "transient"
    }
}

impl CycleReport {
    /// Whether anything changed on disk.
    pub fn changed(&self) -> bool {
        self.downloaded > 0 || self.deleted > 0
    }
}

/// Why a cycle failed.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    /// Listing or fetching failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Fetches failed; the first is shown. With --all-or-nothing nothing was published;
    /// otherwise what was fetched was published and only transient failures end up here.
    #[error("{failed} of {total} downloads failed; first: {first}")]
    Fetch {
        /// Failed downloads.
        failed: usize,
        /// Downloads attempted.
        total: usize,
        /// The first failure.
        first: SourceError,
    },
    /// This process no longer holds the destination's writer lease (another dagsync took
    /// it over): nothing was published.
    #[error("lost the writer lease of {}; nothing was published, standing by", path.display())]
    LeaseLost {
        /// The lease file.
        path: PathBuf,
    },
    /// Writing the destination failed.
    #[error("destination {}: {detail}", path.display())]
    Destination {
        /// The path involved.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

impl CycleError {
    /// The class for retry decisions.
    pub fn class(&self) -> ErrorClass {
        match self {
            CycleError::Source(e) => e.class(),
            CycleError::Fetch { first, .. } => match first.class() {
                // One object missing or changed between list and get is a race, not a config error.
                ErrorClass::NotFound => ErrorClass::Transient,
                c => c,
            },
            CycleError::Destination { .. } | CycleError::LeaseLost { .. } => ErrorClass::Transient,
        }
    }
}

/// The long-lived sync engine.
pub struct Syncer {
    config: Config,
    source: Source,
    staging: Staging,
    state: State,
    state_path: PathBuf,
    /// Verified downloads kept across a failed cycle, keyed by (path, etag), so a retry
    /// downloads only what is still missing.
    staged: HashMap<(String, String), Staged>,
    seen_invalid: HashSet<String>,
    /// Whether this process ever downloaded an object (or found a synced tree): access
    /// denied on every object before that is the role's fault, not one object's.
    role_proven: bool,
    /// Progress counters for the terminal.
    pub progress: Arc<Progress>,
}

/// Download progress, for a terminal progress line.
#[derive(Debug, Default)]
pub struct Progress {
    /// Files to fetch this cycle.
    pub total: AtomicU64,
    /// Files fetched so far.
    pub done: AtomicU64,
    /// Bytes fetched so far.
    pub bytes: AtomicU64,
}

impl Syncer {
    /// Prepares the staging folder and loads the state. Destination problems come back as
    /// [`CycleError::Destination`].
    pub fn new(config: Config, source: Source) -> Result<Self, CycleError> {
        let dest_err = |path: &Path, e: &dyn std::fmt::Display| CycleError::Destination {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        let staging = Staging::create(&config.dest).map_err(|e| dest_err(&config.dest, &e))?;
        let swept = staging.sweep_abandoned();
        if swept > 0 {
            tracing::info!(
                folders = swept,
                "removed staging folders left by stopped processes"
            );
        }
        let state_path = config.dest.join(crate::keys::OWN_DIR).join("state.json");
        let state = State::load(&state_path).map_err(|e| dest_err(&state_path, &e))?;
        Ok(Self {
            config,
            source,
            staging,
            state,
            state_path,
            staged: HashMap::new(),
            seen_invalid: HashSet::new(),
            role_proven: false,
            progress: Arc::new(Progress::default()),
        })
    }

    /// Loads the state file again: a process that just became the writer of a shared
    /// folder continues from what the previous writer published.
    pub fn reload_state(&mut self) -> Result<(), CycleError> {
        self.state = State::load(&self.state_path).map_err(|e| CycleError::Destination {
            path: self.state_path.clone(),
            detail: e.to_string(),
        })?;
        for (_, s) in self.staged.drain() {
            self.staging.discard(&s.staged);
        }
        Ok(())
    }

    /// This process's staging folder (locked while it lives, swept once it is dead):
    /// the place for its temporary files in the destination.
    pub fn staging_dir(&self) -> &std::path::Path {
        self.staging.dir()
    }

    /// Files currently tracked.
    pub fn synced_files(&self) -> usize {
        self.state.files.len()
    }

    /// Runs one cycle. With a `lease`, it is checked right before anything is published,
    /// so a writer that lost it never publishes.
    pub async fn cycle(
        &mut self,
        lease: Option<&crate::lease::Lease>,
    ) -> Result<CycleReport, CycleError> {
        let listing = self.source.list().await?;
        let mut report = CycleReport {
            listed: listing.len(),
            ..Default::default()
        };
        let the_plan = {
            let dest = self.config.dest.clone();
            let state = self.state.clone();
            let exclude = self.config.exclude.clone();
            let limit = self.config.max_delete;
            let listing = listing.clone();
            // Local stats can be slow on EFS: keep them off the async workers.
            tokio::task::spawn_blocking(move || {
                plan(&listing, &state, &exclude, limit, |p| {
                    stat_local(&crate::keys::dest_path(&dest, p))
                })
            })
            .await
            .expect("planning does not panic")
        };
        report.unchanged = the_plan.unchanged;
        report.invalid = the_plan.invalid.len();
        report.refused = the_plan.refused.clone();
        report.refused_count = the_plan.refused_paths.len();
        for (key, why) in &the_plan.invalid {
            if self.seen_invalid.insert(key.clone()) {
                telemetry::key_skipped(key, why);
            }
        }
        if self.config.dry_run {
            report.dry_run_plan = Some(the_plan.render());
            return Ok(report);
        }
        if let Some(r) = &the_plan.refused {
            telemetry::deletions_refused(the_plan.refused_paths.len(), r);
        }
        let (fetched, bytes, via_sdk, failed) = self.fetch_all(&the_plan).await?;
        // Access denied on every object, by a process that never fetched one and finds
        // nothing synced: the task role cannot read the DAGs at all (no s3:GetObject, no
        // kms:Decrypt). That is a configuration error for the cycle loop (exit 3 after
        // retries), not a list of bad objects behind a green /readyz.
        let role_denied = fetched.is_empty()
            && !failed.is_empty()
            && !self.role_proven
            && self.state.files.is_empty()
            && failed.iter().all(|f| f.reason == "access_denied");
        self.role_proven |= !fetched.is_empty() || !self.state.files.is_empty();
        if role_denied {
            let first = &failed[0];
            return Err(CycleError::Fetch {
                failed: failed.len(),
                total: the_plan.fetch.len(),
                first: SourceError::Service {
                    operation: "GetObject",
                    class: ErrorClass::AccessDenied,
                    message: format!(
                        "{}: {} (every object was denied: check s3:GetObject and kms:Decrypt in the task role)",
                        first.key, first.error
                    ),
                },
            });
        }
        report.downloaded = fetched.len();
        report.bytes = bytes;
        report.via_sdk = via_sdk;
        if let Some(lease) = lease
            && !lease.still_held()
        {
            return Err(CycleError::LeaseLost {
                path: lease.path().to_path_buf(),
            });
        }
        self.publish_batch(fetched, &the_plan, &mut report).await?;
        // Published what could be; a failure of the connection itself (not of one
        // object) still fails the cycle, so that readiness and backoff see it.
        let total = the_plan.fetch.len();
        let transient = failed.iter().filter(|f| !f.object_specific()).count();
        if transient > 0 {
            let first = failed
                .into_iter()
                .find(|f| !f.object_specific())
                .expect("counted above");
            return Err(CycleError::Fetch {
                failed: transient,
                total,
                first: SourceError::Service {
                    operation: "GetObject",
                    class: ErrorClass::Transient,
                    message: format!("{}: {}", first.key, first.error),
                },
            });
        }
        report.failed = failed;
        let swept = self.staging.sweep_abandoned();
        if swept > 0 {
            tracing::info!(
                folders = swept,
                "removed staging folders left by stopped processes"
            );
        }
        Ok(report)
    }

    /// Fetches what the plan needs (reusing what an earlier failed cycle staged): the
    /// staged files, bytes fetched now, how many of those fetches used the SDK, and the
    /// objects that failed (with --all-or-nothing, any failure is an error instead).
    async fn fetch_all(
        &mut self,
        the_plan: &Plan,
    ) -> Result<(Vec<Staged>, u64, usize, Vec<FailedObject>), CycleError> {
        let wanted: HashSet<(String, String)> = the_plan
            .fetch
            .iter()
            .map(|(p, o, _)| (p.clone(), o.etag.clone()))
            .collect();
        // Drop staged files the plan no longer wants (the object changed again, or left).
        let stale: Vec<_> = self
            .staged
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for k in stale {
            if let Some(s) = self.staged.remove(&k) {
                self.staging.discard(&s.staged);
            }
        }
        let todo: Vec<(String, RemoteObject)> = the_plan
            .fetch
            .iter()
            .filter(|(p, o, _)| !self.staged.contains_key(&(p.clone(), o.etag.clone())))
            .map(|(p, o, _)| (p.clone(), o.clone()))
            .collect();
        let progress = self.progress.clone();
        progress.total.store(todo.len() as u64, Ordering::Relaxed);
        progress.done.store(0, Ordering::Relaxed);
        progress.bytes.store(0, Ordering::Relaxed);
        let total = todo.len();
        let source = &self.source;
        let staging = &self.staging;
        let writes = staging.writes();
        let mut results = futures::stream::iter(todo.into_iter().map(|(path, obj)| {
            let to = staging.new_path();
            let progress = progress.clone();
            async move {
                let r = source.fetch(&obj, &to, writes).await;
                if r.is_err() {
                    staging.discard(&to);
                } else {
                    progress.done.fetch_add(1, Ordering::Relaxed);
                    progress.bytes.fetch_add(obj.size, Ordering::Relaxed);
                }
                (path, obj, to, r)
            }
        }))
        .buffer_unordered(self.config.concurrency);
        let mut failures = Vec::new();
        let mut bytes = 0u64;
        let mut via_sdk = 0usize;
        let mut done = Vec::new();
        while let Some((path, obj, to, r)) = results.next().await {
            match r {
                Ok(fetched) => {
                    let n = fetched.bytes;
                    bytes += n;
                    via_sdk += usize::from(fetched.via == crate::source::Via::Sdk);
                    telemetry::object_downloaded(fetched.via.as_str(), n);
                    done.push(Staged {
                        path,
                        staged: to,
                        entry: Entry {
                            etag: obj.etag.clone(),
                            size: obj.size,
                            mtime_ns: nanos(obj.last_modified),
                        },
                    });
                }
                Err(e) => failures.push((obj.rel_key.clone(), e)),
            }
        }
        drop(results);
        for s in done {
            self.staged
                .insert((s.path.clone(), s.entry.etag.clone()), s);
        }
        if !failures.is_empty() && self.config.all_or_nothing {
            let failed = failures.len();
            let (_, first) = failures.swap_remove(0);
            return Err(CycleError::Fetch {
                failed,
                total,
                first,
            });
        }
        let failed: Vec<FailedObject> = failures
            .iter()
            .map(|(key, e)| FailedObject::new(key.clone(), e))
            .collect();
        if !self.staged.is_empty() {
            // One flush for the whole batch (it can take a while on EFS): off the async thread.
            // Off a local disk, the files written this cycle get their mtime once more after
            // it (see staging::restamp).
            let staging_dir = self.staging.dir().to_path_buf();
            let restamp: Vec<(PathBuf, u128)> = if writes == crate::source::Writes::Offload {
                self.staged
                    .values()
                    .map(|s| (s.staged.clone(), s.entry.mtime_ns))
                    .collect()
            } else {
                Vec::new()
            };
            let synced = tokio::task::spawn_blocking(move || {
                crate::staging::sync_filesystem(&staging_dir)?;
                crate::staging::restamp(&restamp)
            })
            .await
            .expect("syncfs does not panic");
            synced.map_err(|e| CycleError::Destination {
                path: self.staging.dir().to_path_buf(),
                detail: format!("flushing staged files: {e}"),
            })?;
        }
        // Every wanted object is staged and durable now: hand the batch over in plan order.
        let batch = the_plan
            .fetch
            .iter()
            .filter_map(|(p, o, _)| self.staged.remove(&(p.clone(), o.etag.clone())))
            .collect();
        Ok((batch, bytes, via_sdk, failed))
    }

    async fn publish_batch(
        &mut self,
        batch: Vec<Staged>,
        the_plan: &Plan,
        report: &mut CycleReport,
    ) -> Result<(), CycleError> {
        let changed =
            !batch.is_empty() || !the_plan.delete.is_empty() || !the_plan.forget.is_empty();
        if !changed {
            return Ok(());
        }
        let dest = self.config.dest.clone();
        let delete = the_plan.delete.clone();
        let mut state = std::mem::take(&mut self.state);
        let (state, published) = tokio::task::spawn_blocking(move || {
            let out = publish(&dest, batch, &delete, &mut state);
            (state, out)
        })
        .await
        .expect("publishing does not panic");
        self.state = state;
        for path in &the_plan.forget {
            self.state.files.remove(path);
        }
        report.deleted = published.deleted;
        report.pruned = published.pruned;
        telemetry::files_deleted(published.deleted);
        let tmp = self.staging.dir().join("state.json.tmp");
        let save = self.state.save(&self.state_path, &tmp);
        if let Some((path, why)) = published.failed.first() {
            return Err(CycleError::Destination {
                path: crate::keys::dest_path(&self.config.dest, path),
                detail: format!(
                    "{why} ({} files could not be published or deleted)",
                    published.failed.len()
                ),
            });
        }
        save.map_err(|e| CycleError::Destination {
            path: self.state_path.clone(),
            detail: e.to_string(),
        })
    }
}

/// Prints a one-line progress indicator to a terminal until `stop` is set.
pub async fn show_progress(progress: Arc<Progress>, started: Instant) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let total = progress.total.load(Ordering::Relaxed);
        if total == 0 {
            continue;
        }
        let done = progress.done.load(Ordering::Relaxed);
        let mib = progress.bytes.load(Ordering::Relaxed) as f64 / 1048576.0;
        eprint!(
            "\r  downloading {done}/{total} files, {mib:.1} MiB, {:.0}s ",
            started.elapsed().as_secs_f64()
        );
    }
}
