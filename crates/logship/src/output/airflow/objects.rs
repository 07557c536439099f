//! The objects of one attempt's log in S3, and what the next upload does to them.
//!
//! An [`Attempt`] holds what S3 has (`stored`, ranges of the file each held by one
//! object named by its first offset) and the bytes not uploaded yet (`pending`). Each
//! upload is one PutObject of a new object that holds the pending bytes and may *fold*
//! in the last few stored objects (their bytes re-read from the file), like a binary
//! counter: an object is folded while it is no larger than what the upload already
//! holds. So a file written at a steady rate has about log2(uploads) objects while it
//! runs, each byte is uploaded about log2(uploads) / 2 times, and every upload is still
//! one request. The folded objects are deleted after the upload is stored: the first of
//! them shares the new object's name and is replaced.
//!
//! Offsets here are *virtual*: a file truncated and written again (a new identity of
//! the same path) continues after the end of the previous one, so that its objects
//! neither replace nor sort before what the previous content left.

use std::collections::BTreeMap;

use super::layout::Name;
use super::saved::SavedAttempt;

/// A range of the file held by one object in S3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Virtual offset of its first byte (its name is [`Name::Segment`] of it).
    pub start: u64,
    /// Its size.
    pub len: u64,
    /// CRC-32 of its bytes, when this process wrote it (objects found at start have none).
    pub crc: Option<u32>,
}

impl Stored {
    /// Virtual offset just past its last byte.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// The next upload of an attempt: one object from `start` to the end of the pending
/// bytes, made of the file's bytes `disk` (file offsets, re-read from the file) followed
/// by the pending bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Virtual offset of the new object's first byte.
    pub start: u64,
    /// File offsets of the bytes to re-read before the pending ones (empty: none).
    pub disk: std::ops::Range<u64>,
    /// The folded objects' ranges in file offsets, with their CRCs where known: what the
    /// re-read bytes must match.
    pub checks: Vec<(std::ops::Range<u64>, u32)>,
    /// How many stored objects (the last ones) it folds in.
    pub folds: usize,
    /// Virtual offset just past its last byte.
    pub end: u64,
}

/// What a stored upload leaves to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Done {
    /// Names of objects now superseded (folded, or found at start and now covered).
    pub delete: Vec<Name>,
    /// `(file id, end)` pairs now delivered.
    pub acks: Vec<(u64, u64)>,
}

/// One attempt's log file: what S3 holds of it and what waits.
#[derive(Debug)]
pub struct Attempt {
    stored: Vec<Stored>,
    /// Objects found in S3 at start beyond where this process resumed: superseded once
    /// the stored objects cover them.
    stale: Vec<Stored>,
    pending: Vec<u8>,
    pending_start: u64,
    /// The current identity of the file and the virtual offset of its byte 0.
    file: u64,
    base: u64,
    /// Delivered once the pending bytes are stored.
    acks: BTreeMap<u64, u64>,
    /// A stored object whose content is uncertain (the resume point falls inside it, or
    /// an upload under its name failed): the next upload must start at it.
    refold_from: Option<usize>,
    /// Objects superseded by a stored upload whose deletion is not confirmed yet, and the
    /// upload in flight: what may exist besides `stored` (virtual start and end).
    doomed: Vec<(u64, u64)>,
    inflight: Option<(u64, u64)>,
}

impl Attempt {
    /// An attempt whose file `file` resumes at file offset `resume`, with no knowledge
    /// of objects in S3 (a file seen for the first time).
    pub fn new(file: u64, resume: u64) -> Self {
        Self::restore(file, file, 0, resume, Vec::new(), Vec::new())
    }

    /// An attempt restored from what this output saved before it stopped: the objects
    /// it had stored (`objects`, by virtual start and size) and the ones that may exist
    /// besides (`maybe`: uploads in flight, deletions not done; virtual start and end),
    /// for the identity `saved_file` whose byte 0 was at virtual `base`. Now the file
    /// `file` resumes at file offset `resume`.
    pub fn restore(
        file: u64,
        saved_file: u64,
        base: u64,
        resume: u64,
        mut objects: Vec<(u64, u64)>,
        maybe: Vec<(u64, u64)>,
    ) -> Self {
        objects.sort_unstable();
        let same = file == saved_file;
        let (base, resume) = if same {
            (base, base + resume)
        } else {
            // Another identity of the path: it continues after all that was stored.
            let end = objects.iter().map(|(s, l)| s + l).max().unwrap_or(0);
            (end, end + resume)
        };
        // Below the resume point: delivered, kept. At or beyond it: left by a run that
        // stopped before its checkpoint, superseded once the new uploads cover them.
        let (stored, mut stale): (Vec<Stored>, Vec<Stored>) = objects
            .into_iter()
            .map(|(start, len)| Stored {
                start,
                len,
                crc: None,
            })
            .partition(|o| o.start < resume);
        let mut refold_from = stored
            .iter()
            .position(|o| o.end() > resume)
            .filter(|_| same);
        for (start, end) in maybe {
            match stored.iter().position(|o| o.start == start) {
                // An upload in flight under the name of a stored object may have replaced
                // it with more: re-upload from it (the file still has the bytes).
                Some(i) if end > stored[i].end() && same => {
                    refold_from = Some(refold_from.map_or(i, |r: usize| r.min(i)));
                }
                Some(_) => {}
                None => stale.push(Stored {
                    start,
                    len: end.saturating_sub(start),
                    crc: None,
                }),
            }
        }
        let refold_from = refold_from.filter(|&i| stored[i].start >= base);
        Self {
            stored,
            stale,
            pending: Vec::new(),
            pending_start: resume,
            file,
            base,
            acks: BTreeMap::new(),
            refold_from,
            doomed: Vec::new(),
            inflight: None,
        }
    }

    /// What to save to restore this attempt: the stored objects, and as `maybe` those
    /// that may exist besides (stale ones, uploads in flight, deletions not done).
    pub fn saved(&self) -> SavedAttempt {
        SavedAttempt {
            file: self.file,
            base: self.base,
            objects: self.stored.iter().map(|o| (o.start, o.len)).collect(),
            maybe: self
                .stale
                .iter()
                .map(|o| (o.start, o.end()))
                .chain(self.doomed.iter().copied())
                .chain(self.inflight)
                .collect(),
        }
    }

    /// An upload of `upload` is about to be sent (saved first, so that a crash leaves
    /// its name known).
    pub fn begin(&mut self, upload: &Upload) {
        self.inflight = Some((upload.start, upload.end));
    }

    /// The upload failed; it may still have taken effect (an answer lost on the way). If
    /// it carried the name of a stored object, that object's content is now uncertain
    /// and the next upload starts at it.
    pub fn failed(&mut self, upload: &Upload) {
        self.inflight = None;
        match self.stored.iter().position(|o| o.start == upload.start) {
            Some(i) => self.refold_from = Some(self.refold_from.map_or(i, |r| r.min(i))),
            None => self.stale.push(Stored {
                start: upload.start,
                len: upload.end - upload.start,
                crc: None,
            }),
        }
    }

    /// The object named by virtual offset `start` is deleted.
    pub fn deleted(&mut self, start: u64) {
        self.doomed.retain(|&(s, _)| s != start);
    }

    /// Objects to delete: superseded ones not confirmed deleted yet.
    pub fn doomed(&self) -> Vec<Name> {
        self.doomed.iter().map(|&(s, _)| Name::Segment(s)).collect()
    }

    /// Whether a chunk of `file` starting at file offset `start` continues the pending
    /// bytes. When not, the caller uploads what is pending and calls [`Attempt::restart`].
    pub fn continues(&self, file: u64, start: u64) -> bool {
        file == self.file && self.base + start == self.pending_end()
    }

    /// Starts over at file offset `start` of `file` (nothing may be pending): a new
    /// identity of the path continues after everything so far.
    pub fn restart(&mut self, file: u64, start: u64) {
        debug_assert!(self.pending.is_empty());
        if file != self.file {
            self.base = self.pending_end().max(self.stored_end());
            self.file = file;
            self.refold_from = None;
        }
        self.pending_start = self.base + start;
    }

    /// Adds a chunk's bytes, delivered (with `(file, end)`) once stored.
    pub fn push(&mut self, raw: &[u8], file: u64, end: u64) {
        self.pending.extend_from_slice(raw);
        let e = self.acks.entry(file).or_insert(0);
        *e = (*e).max(end);
    }

    /// Bytes waiting for an upload.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Whether anything waits: bytes, or acknowledgements (a chunk without bytes).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || !self.acks.is_empty()
    }

    fn pending_end(&self) -> u64 {
        self.pending_start + self.pending.len() as u64
    }

    fn stored_end(&self) -> u64 {
        self.stored.last().map_or(0, Stored::end)
    }

    /// What S3 holds, in order.
    pub fn stored(&self) -> &[Stored] {
        &self.stored
    }

    /// The current identity's virtual offset of byte 0.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The next upload, folding in the last stored objects while each is no larger than
    /// what the upload holds so far and the whole stays within `max_fold` bytes. Only
    /// objects of the current identity (whose bytes the file still has) are folded.
    /// `None` when nothing is pending.
    pub fn plan(&self, max_fold: u64) -> Option<Upload> {
        if self.pending.is_empty() {
            return None;
        }
        let mut start = self.pending_start;
        let mut held = self.pending.len() as u64;
        let mut folds = 0;
        if let Some(r) = self.refold_from {
            // The resume point falls inside the last stored object: replace it, its
            // bytes before the resume point re-read from the file.
            start = self.stored[r].start;
            folds = self.stored.len() - r;
        } else {
            for o in self.stored.iter().rev() {
                if o.end() != start
                    || o.start < self.base
                    || o.len > held
                    || held + o.len > max_fold
                {
                    break;
                }
                start = o.start;
                held += o.len;
                folds += 1;
            }
        }
        let folded = &self.stored[self.stored.len() - folds..];
        Some(Upload {
            start,
            disk: (start - self.base)..(self.pending_start - self.base),
            checks: folded
                .iter()
                .filter_map(|o| {
                    let end = o.end().min(self.pending_start);
                    Some(((o.start - self.base)..(end - self.base), o.crc?))
                })
                .collect(),
            folds,
            end: self.pending_end(),
        })
    }

    /// Records that `upload` (whose bytes have CRC-32 `crc`) is stored: the folded
    /// objects and the pending bytes are now one object.
    pub fn uploaded(&mut self, upload: &Upload, crc: u32) -> Done {
        let mut done = Done::default();
        self.inflight = None;
        let folded = self.stored.split_off(self.stored.len() - upload.folds);
        for o in folded.iter().filter(|o| o.start != upload.start) {
            done.delete.push(Name::Segment(o.start));
            self.doomed.push((o.start, o.end()));
        }
        let stored = Stored {
            start: upload.start,
            len: upload.end - upload.start,
            crc: Some(crc),
        };
        self.stored.push(stored);
        self.pending.clear();
        self.pending_start = upload.end;
        self.refold_from = None;
        done.acks = std::mem::take(&mut self.acks).into_iter().collect();
        done.delete.extend(self.covered_stale());
        done
    }

    /// Acknowledgements that need no upload (chunks without bytes), taken.
    pub fn take_acks_without_bytes(&mut self) -> Vec<(u64, u64)> {
        if self.pending.is_empty() {
            std::mem::take(&mut self.acks).into_iter().collect()
        } else {
            Vec::new()
        }
    }

    /// Stale objects that the stored ones now cover, moved from the stale list to the
    /// doomed one.
    fn covered_stale(&mut self) -> Vec<Name> {
        let end = self.stored_end();
        let names: Vec<u64> = self.stored.iter().map(|o| o.start).collect();
        let mut out = Vec::new();
        let mut doomed = Vec::new();
        self.stale.retain(|o| {
            if o.end() <= end {
                if !names.contains(&o.start) {
                    out.push(Name::Segment(o.start));
                    doomed.push((o.start, o.end()));
                }
                false
            } else {
                true
            }
        });
        self.doomed.extend(doomed);
        out
    }

    /// Compaction of a quiet attempt: when more than one object holds the current
    /// identity's bytes from its first byte on, the upload that folds all of them into
    /// one (re-read from the file). `None` when there is nothing to compact or bytes wait.
    pub fn compaction(&self) -> Option<Upload> {
        if !self.pending.is_empty() {
            return None;
        }
        let first = self.stored.iter().position(|o| o.start >= self.base)?;
        let ours = &self.stored[first..];
        if ours.len() < 2 || ours[0].start != self.base {
            return None;
        }
        if ours.windows(2).any(|w| w[0].end() != w[1].start) {
            return None;
        }
        let end = self.stored_end();
        Some(Upload {
            start: self.base,
            disk: 0..(end - self.base),
            checks: ours
                .iter()
                .filter_map(|o| Some(((o.start - self.base)..(o.end() - self.base), o.crc?)))
                .collect(),
            folds: ours.len(),
            end,
        })
    }

    /// Records a stored compaction (`upload` from [`Attempt::compaction`]).
    pub fn compacted(&mut self, upload: &Upload, crc: u32) -> Vec<Name> {
        self.pending_start = upload.start;
        let done = self.uploaded(upload, crc);
        done.delete
    }

    /// Forgets every stored object (Airflow's own uploader wrote the whole file at the
    /// attempt key) and returns their names, to delete.
    pub fn superseded(&mut self) -> Vec<Name> {
        let gone: Vec<(u64, u64)> = self
            .stored
            .drain(..)
            .chain(self.stale.drain(..))
            .map(|o| (o.start, o.end()))
            .collect();
        self.doomed.extend(gone);
        self.refold_from = None;
        self.doomed()
    }

    /// Virtual bytes stored so far (what Airflow's own object must at least hold for
    /// ours to be redundant).
    pub fn stored_bytes(&self) -> u64 {
        self.stored.iter().map(|o| o.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Uploads whatever is pending, as the output does, checking the plan against the
    /// file `file`; returns the deletions.
    fn upload(a: &mut Attempt, file: &[u8], max_fold: u64) -> Vec<Name> {
        let up = a.plan(max_fold).expect("something pending");
        let mut body = file[up.disk.start as usize..up.disk.end as usize].to_vec();
        for (range, crc) in &up.checks {
            assert_eq!(
                crc32fast::hash(&file[range.start as usize..range.end as usize]),
                *crc
            );
        }
        body.extend_from_slice(a.pending());
        assert_eq!(body.len() as u64, up.end - up.start);
        a.uploaded(&up, crc32fast::hash(&body)).delete
    }

    #[test]
    fn steady_writes_fold_like_a_binary_counter() {
        let mut a = Attempt::new(1, 0);
        let mut file = Vec::new();
        let mut deleted = 0;
        for i in 0..16u64 {
            let line = vec![b'x'; 100];
            file.extend_from_slice(&line);
            a.push(&line, 1, (i + 1) * 100);
            deleted += upload(&mut a, &file, u64::MAX).len();
            assert_eq!(
                a.stored().len() as u32,
                (i + 1).count_ones(),
                "after upload {}",
                i + 1
            );
        }
        assert_eq!(
            a.stored(),
            &[Stored {
                start: 0,
                len: 1600,
                crc: Some(crc32fast::hash(&file))
            }]
        );
        // Every object made but the last was deleted or replaced (same name).
        assert!(deleted <= 15);
    }

    #[test]
    fn max_fold_bounds_what_an_upload_re_reads() {
        let mut a = Attempt::new(1, 0);
        let mut file = Vec::new();
        for i in 0..64u64 {
            let line = vec![b'y'; 100];
            file.extend_from_slice(&line);
            a.push(&line, 1, (i + 1) * 100);
            let up = a.plan(800).unwrap();
            assert!(up.end - up.start <= 800);
            upload(&mut a, &file, 800);
        }
        assert!(a.stored().len() >= 8, "{:?}", a.stored());
    }

    #[test]
    fn acks_wait_for_the_upload_that_holds_them() {
        let mut a = Attempt::new(7, 0);
        a.push(b"one\n", 7, 4);
        a.push(b"two\n", 7, 8);
        let up = a.plan(1 << 20).unwrap();
        let done = a.uploaded(&up, crc32fast::hash(b"one\ntwo\n"));
        assert_eq!(done.acks, vec![(7, 8)]);
        assert!(!a.has_pending());
    }

    #[test]
    fn a_resume_inside_a_stored_object_re_uploads_it_whole() {
        // S3 has [0,100) and [100,300); the checkpoint says 150 (it lagged the upload),
        // and an object from a run that never checkpointed sits at 300.
        let mut a = Attempt::restore(1, 1, 0, 150, vec![(100, 200), (0, 100), (300, 50)], vec![]);
        a.push(&[b'z'; 250], 1, 400);
        let up = a.plan(1 << 20).unwrap();
        assert_eq!(up.start, 100);
        assert_eq!(up.disk, 100..150);
        assert_eq!(up.end, 400);
        let done = a.uploaded(&up, 0);
        // [100, 400) replaced the object named 100; the one at 300 is covered.
        assert_eq!(done.delete, vec![Name::Segment(300)]);
        assert_eq!(a.stored().len(), 2);
    }

    #[test]
    fn a_new_identity_continues_after_the_old_one() {
        let mut a = Attempt::new(1, 0);
        a.push(b"old\n", 1, 4);
        let up = a.plan(1 << 20).unwrap();
        a.uploaded(&up, 0);
        assert!(!a.continues(2, 0));
        a.restart(2, 0);
        a.push(b"new\n", 2, 4);
        let up = a.plan(1 << 20).unwrap();
        // Not folded with the old content, which the file no longer has.
        assert_eq!((up.start, up.folds, up.disk.clone()), (4, 0, 0..0));
        a.uploaded(&up, 0);
        let c = a.compaction();
        assert_eq!(
            c, None,
            "one object of the new identity: nothing to compact"
        );
    }

    #[test]
    fn compaction_makes_one_object_of_the_file() {
        let mut a = Attempt::new(1, 0);
        let mut file = Vec::new();
        for i in 0..5u64 {
            file.extend_from_slice(b"line\n");
            a.push(b"line\n", 1, (i + 1) * 5);
            upload(&mut a, &file, u64::MAX);
        }
        assert_eq!(a.stored().len(), 2);
        let c = a.compaction().unwrap();
        assert_eq!((c.start, c.disk.clone(), c.end), (0, 0..25, 25));
        let deleted = a.compacted(&c, crc32fast::hash(&file));
        assert_eq!(deleted, vec![Name::Segment(20)]);
        assert_eq!(a.stored().len(), 1);
        assert_eq!(a.compaction(), None);
    }

    proptest! {
        /// Whatever the sizes of the writes and the fold limit, the stored objects tile
        /// the file from 0 without gaps or overlaps, each upload's plan is consistent with
        /// the file, and after compaction one object holds it all.
        #[test]
        fn objects_always_tile_the_file(
            writes in proptest::collection::vec(1usize..300, 1..60),
            max_fold in 1u64..4000,
        ) {
            let mut a = Attempt::new(1, 0);
            let mut file = Vec::new();
            let mut live: std::collections::BTreeSet<u64> = Default::default();
            for (i, n) in writes.iter().enumerate() {
                let bytes: Vec<u8> = (0..*n).map(|j| (i * 31 + j) as u8).collect();
                file.extend_from_slice(&bytes);
                a.push(&bytes, 1, file.len() as u64);
                let up = a.plan(max_fold).unwrap();
                live.insert(up.start);
                for d in upload(&mut a, &file, max_fold) {
                    let Name::Segment(s) = d else { panic!("only segments") };
                    prop_assert!(live.remove(&s));
                }
                let mut at = 0;
                for o in a.stored() {
                    prop_assert_eq!(o.start, at);
                    at = o.end();
                }
                prop_assert_eq!(at, file.len() as u64);
                let names: std::collections::BTreeSet<u64> =
                    a.stored().iter().map(|o| o.start).collect();
                prop_assert_eq!(&names, &live);
            }
            if let Some(c) = a.compaction() {
                a.compacted(&c, crc32fast::hash(&file));
            }
            prop_assert_eq!(a.stored().len(), 1);
            prop_assert_eq!(a.stored()[0].len, file.len() as u64);
        }
    }
}
