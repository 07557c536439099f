//! Keeping a sidecar's resident memory at what it actually uses.
//!
//! An ECS task reserves memory for every container, so an idle sidecar's RSS is paid
//! for on every Airflow task. Two things inflate it beyond what the daemon uses, and
//! both are measured in `bench/*/RESULTS.md`:
//!
//! - **Fault-around.** When a page of the executable is first touched, Linux maps up to
//!   16 neighbouring pages that are already in the page cache (`fault_around_bytes`,
//!   64 KiB). A static binary that runs the AWS SDK touches code scattered over most of
//!   its 10+ MiB, so nearly the whole binary ends up counted as resident. [`init`] marks
//!   the executable's mappings `MADV_RANDOM`, which turns fault-around off for them: a
//!   page becomes resident only when it runs.
//! - **Freed heap kept by glibc.** After a burst (a full DAG sync, a large log batch) the
//!   allocator keeps freed memory in its arenas, including those of blocking-pool threads
//!   that have since exited. [`release`] hands it back (`malloc_trim`), and drops the
//!   mappings of code pages so that only the code the idle loop runs faults back in.
//!
//! - **Large buffers faulted in afresh.** glibc serves allocations over its mmap
//!   threshold (128 KiB, rising to the largest freed block) with their own mapping,
//!   and gives freed memory at the top of a heap back to the kernel once more than
//!   the trim threshold is free. A daemon that builds a multi-MiB request body per
//!   call (logship's PutRecordBatch) then takes a page fault for every 4 KiB of every
//!   body: 190,000 faults and 40 % of logship's CPU time for a 256 MiB backlog.
//!   [`keep_freed_buffers`] keeps such buffers in the heap for reuse; [`release`]
//!   still hands everything back once the burst is over.
//!
//! glibc's malloc stays: mimalloc (v2 and v3) ran dagsync's full sync in 13 % fewer
//! instructions (callgrind) but doubled its peak RSS (16 → 32 MiB, per-thread heaps of
//! the blocking pool), and peak memory is the tighter budget for a sidecar.
//!
//! The madvise calls are advice to the kernel: if `/proc` is not mounted (an empty
//! chroot) or a call fails, nothing changes but the RSS.
//!
//! This is the crate's one module with `unsafe`: the libc calls have no safe wrapper.

use std::fs;

/// One mapping of the running executable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    executable: bool,
}

/// Parses `/proc/self/maps`, keeping the mappings of the file at `exe`.
fn exe_mappings(maps: &str, exe: &str) -> Vec<Mapping> {
    maps.lines()
        .filter_map(|line| {
            // The path is the rest of the line after five fields and may hold spaces.
            let before = line.strip_suffix(exe)?;
            if !before.ends_with(' ') {
                return None;
            }
            let mut fields = before.split_ascii_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: usize::from_str_radix(start, 16).ok()?,
                end: usize::from_str_radix(end, 16).ok()?,
                executable: perms.as_bytes().get(2) == Some(&b'x'),
            })
        })
        .filter(|m| m.end > m.start)
        .collect()
}

fn own_mappings() -> Vec<Mapping> {
    let Ok(exe) = fs::read_link("/proc/self/exe") else {
        return Vec::new();
    };
    let Some(exe) = exe.to_str() else {
        return Vec::new();
    };
    fs::read_to_string("/proc/self/maps")
        .map(|maps| exe_mappings(&maps, exe))
        .unwrap_or_default()
}

/// Turns off fault-around for the executable's own mappings. Call once at start.
pub fn init() {
    for m in own_mappings() {
        // SAFETY: MADV_RANDOM changes only how pages are read in, never their contents,
        // and the range is a whole mapping of this process taken from /proc/self/maps.
        unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_RANDOM,
            );
        }
    }
}

/// Largest allocation glibc still serves from its heap once [`keep_freed_buffers`] ran.
pub const HEAP_ALLOCATION_LIMIT: usize = 32 << 20;

/// Lets glibc reuse large freed buffers instead of unmapping them: allocations up to
/// [`HEAP_ALLOCATION_LIMIT`] come from the heap, and up to `keep` bytes of freed memory
/// stay there between calls.
///
/// All threads then share one arena. `malloc_trim` (in [`release`]) shrinks only the
/// main arena's top; another thread's arena would keep up to `keep` bytes resident for
/// good (measured: logship idled at 10.2 MiB after a backlog instead of 5.6). Call it
/// first thing in `main`, before the async runtime starts its threads: a thread that
/// has already allocated keeps the arena it got.
///
/// Without glibc (another allocator or libc) this does nothing.
pub fn keep_freed_buffers(keep: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let clamp = |v: usize| libc::c_int::try_from(v).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes the allocator's settings; every value is in
        // range for a c_int and glibc validates them.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_THRESHOLD, clamp(HEAP_ALLOCATION_LIMIT));
            libc::mallopt(libc::M_TRIM_THRESHOLD, clamp(keep));
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = keep;
}

/// Makes every allocation of `threshold` bytes or more its own mapping, returned to the
/// kernel the moment it is freed, for a daemon whose memory limit must hold while it
/// handles buffers of many sizes (dagsync's whole-object bodies).
///
/// glibc otherwise raises its mmap threshold each time such a buffer is freed (up to
/// 32 MiB), after which buffers of that size come from the heaps of up to 8 arenas per
/// core, each keeping up to twice the threshold of freed memory resident: measured,
/// dagsync peaked at 61 MiB RSS syncing 40 objects of 7 MiB with a 16 MiB body budget.
/// A fixed threshold turns the dynamic one off; two arenas bound what the heaps keep.
/// Call it first thing in `main`, before any thread starts.
pub fn return_large_buffers(threshold: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let clamp = |v: usize| libc::c_int::try_from(v).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes the allocator's settings; every value is in
        // range for a c_int and glibc validates them.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
            libc::mallopt(libc::M_MMAP_THRESHOLD, clamp(threshold));
            libc::mallopt(libc::M_TRIM_THRESHOLD, clamp(threshold.saturating_mul(2)));
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = threshold;
}

/// Returns freed heap to the kernel and unmaps resident code pages; call when a burst
/// of work is over and the daemon goes idle. Costs a few milliseconds at most: the
/// next burst faults the code it needs back in from the page cache.
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
    for m in own_mappings().into_iter().filter(|m| m.executable) {
        // SAFETY: only executable mappings of the executable file are dropped. They are
        // private, read-only and never written (no text relocations in a PIE), so the
        // kernel maps the very same bytes back from the file on the next access. Writable
        // or relocated (RELRO) mappings are never passed here.
        unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0100000 r--p 00000000 fd:01 123 /usr/bin/dagsync
55d0c0100000-55d0c0900000 r-xp 00100000 fd:01 123 /usr/bin/dagsync
55d0c0900000-55d0c0a00000 r--p 00900000 fd:01 123 /usr/bin/dagsync
55d0c0a00000-55d0c0a10000 rw-p 00a00000 fd:01 123 /usr/bin/dagsync
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0          [heap]
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0          [stack]
7f0000000000-7f0000001000 r-xp 00000000 fd:01 456 /usr/bin/dagsync-other
7f0000001000-7f0000002000 r-xp 00000000 fd:01 457 /opt/x/usr/bin/dagsync
";

    #[test]
    fn keeps_only_the_executables_mappings() {
        let m = exe_mappings(MAPS, "/usr/bin/dagsync");
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].start, 0x55d0c0000000);
        assert_eq!(m[1].end, 0x55d0c0900000);
        let exec: Vec<bool> = m.iter().map(|m| m.executable).collect();
        assert_eq!(exec, [false, true, false, false]);
    }

    #[test]
    fn release_leaves_the_process_working() {
        init();
        release();
        // Code and data still work after their pages were dropped and faulted back.
        let v: Vec<u64> = (0..10_000).collect();
        assert_eq!(v.iter().sum::<u64>(), 49_995_000);
        assert!(
            !own_mappings().is_empty(),
            "/proc/self/maps lists this test binary"
        );
    }
}
