//! One page of memory shared between the supervisor and one child: the
//! child writes facts about itself (whether user code replaced the stop
//! handler; its cycle count, the start of its running cycle, the length of
//! its last one and its Zend heap), the supervisor reads them without a
//! syscall. The page is
//! mapped `MAP_SHARED | MAP_ANONYMOUS` by the parent before fork, so the
//! child inherits the same physical page. The supervisor maps one region of
//! many pages once (`SharedSlots`) and hands out one page per worker, so a
//! farm of any size adds one mapping to each process, not one per worker;
//! only the pages of live workers ever take memory. Layout: `lrpm_shared_page` in
//! csrc/lrpm_shim.h (src/php checks the constants and offsets against it at
//! compile time).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;

/// The page size the layout is written for.
pub const PAGE_SIZE: usize = 4096;
/// `LRPM_SHARED_PAGE_MAGIC`: "LRPM" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"LRPM");
/// `LRPM_SHARED_PAGE_VERSION`: bump when a field is added or changes meaning.
/// Version 2 added the cycle fields, version 3 the recycle reason and the
/// OPcache figures, 4 the ended status, 5 the tasks, 6 the heartbeat and
/// backtraces on demand.
pub const VERSION: u32 = 6;
/// `LRPM_FLAG_USER_SIGTERM_HANDLER`: user code called `pcntl_signal(SIGTERM, ...)`.
pub const FLAG_USER_SIGTERM_HANDLER: u64 = 0x1;
/// `LRPM_FLAG_USER_SIGINT_HANDLER`: user code called `pcntl_signal(SIGINT, ...)`.
pub const FLAG_USER_SIGINT_HANDLER: u64 = 0x2;
/// `LRPM_FLAG_STOP_SIGNALLED`: a stop signal (SIGTERM, SIGINT) reached the child.
pub const FLAG_STOP_SIGNALLED: u64 = 0x4;
/// `LRPM_FLAG_BACKTRACE_READY`: the child answers backtrace requests (its
/// handler for the backtrace signal is in place).
pub const FLAG_BACKTRACE_READY: u64 = 0x8;
/// `LRPM_PROGRESS_NOTE_BYTES`.
pub const PROGRESS_NOTE_BYTES: usize = 64;
/// `LRPM_BACKTRACE_BYTES`.
pub const BACKTRACE_BYTES: usize = 3072;

/// The `#[repr(C)]` twin of `lrpm_shared_page`. Every field is written
/// atomically by the child and read atomically here.
///
/// The cycle fields are written by the worker loop in C. When a cycle ends
/// the child stores `last_cycle_ns`, `heap_bytes`, `peak_heap_bytes` and
/// `cycle_started_ns = 0`, then increments `cycles` with release ordering;
/// readers load `cycles` with acquire first, so a count never comes with the
/// start time of the cycle it already counts.
#[repr(C)]
pub struct Layout {
    pub magic: AtomicU32,
    pub version: AtomicU32,
    pub flags: AtomicU64,
    /// Completed `cycle()` calls of this process.
    pub cycles: AtomicU64,
    /// CLOCK_MONOTONIC ns when the running cycle began; 0 between cycles
    /// (clock-mode waits included) and before the first one.
    pub cycle_started_ns: AtomicU64,
    /// Duration of the last completed cycle, ns.
    pub last_cycle_ns: AtomicU64,
    /// `memory_get_usage(true)` at the end of the last cycle.
    pub heap_bytes: AtomicU64,
    /// `memory_get_peak_usage(true)` at the end of the last cycle.
    pub peak_heap_bytes: AtomicU64,
    /// Why the worker is about to exit 75 (`RecycleReason::code`), written
    /// just before the exit; 0 otherwise.
    pub recycle_reason: AtomicU64,
    /// CLOCK_MONOTONIC ns when the worker last published the OPcache
    /// figures below (0: never). Stored last, with release.
    pub opcache_published_ns: AtomicU64,
    /// `opcache_get_status()`'s memory_usage used_memory and free_memory.
    pub opcache_used_bytes: AtomicU64,
    pub opcache_free_bytes: AtomicU64,
    /// `opcache_get_status()`'s opcache_statistics hits and misses.
    pub opcache_hits: AtomicU64,
    pub opcache_misses: AtomicU64,
    /// Version 4: 1 + the status the process exits with, stored once its
    /// PHP request has ended (its stop is done); 0 before.
    pub ended_status: AtomicU64,
    /// Version 5: the worker's tasks (`Lrpm\Task`), written by the worker
    /// only: a start fills a free pid slot, then adds to `tasks_running`
    /// with release; an end clears its slot first.
    pub tasks_running: AtomicU64,
    pub tasks_started: AtomicU64,
    /// Threw, died, or sent nothing back.
    pub tasks_failed: AtomicU64,
    /// Killed at their wait's timeout or at the end of the stop's grace.
    pub tasks_timed_out: AtomicU64,
    /// Running tasks' pids (0: a free slot); the first `TASK_PIDS` only.
    pub task_pids: [AtomicU64; TASK_PIDS],
    /// Version 6: CLOCK_MONOTONIC ns of the last `Lrpm\progress()` (0:
    /// none), stored last with release.
    pub progress_ns: AtomicU64,
    pub progress_calls: AtomicU64,
    /// CLOCK_MONOTONIC ns the last cycle() returned (0: none yet).
    pub cycle_ended_ns: AtomicU64,
    /// Odd while the note is being written (a seqlock).
    pub progress_note_seq: AtomicU64,
    pub progress_note: [AtomicU8; PROGRESS_NOTE_BYTES],
    /// Version 6: the only field the supervisor writes: the number of its
    /// latest backtrace request.
    pub backtrace_asked: AtomicU64,
    /// The request the text answers, stored after it with release.
    pub backtrace_answered: AtomicU64,
    pub backtrace_length: AtomicU64,
    pub backtrace_text: [AtomicU8; BACKTRACE_BYTES],
    /// Room for later versions; zero until one defines them.
    pub reserved: [AtomicU64; (PAGE_SIZE - 3592) / 8],
}

/// `LRPM_TASK_PIDS`: running tasks whose pids a page lists.
pub const TASK_PIDS: usize = 32;

/// A worker's tasks as its page shows them, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFigures {
    pub running: u64,
    pub started: u64,
    pub failed: u64,
    pub timed_out: u64,
    /// The running tasks' pids (at most `TASK_PIDS`).
    pub pids: Vec<i32>,
}

/// A worker's heartbeat as its page shows it, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// CLOCK_MONOTONIC ns of the last `Lrpm\progress()`; 0: none.
    pub progress_ns: u64,
    pub progress_calls: u64,
    /// What the last call said (at most 63 bytes).
    pub progress_note: String,
}

/// The OPcache figures a worker published (OPcache's memory is shared by
/// every process of the host, so any worker's are the host's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpcacheFigures {
    /// CLOCK_MONOTONIC ns of the publication.
    pub published_ns: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

/// What a worker's page says about its cycles, read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleSnapshot {
    /// Completed `cycle()` calls.
    pub cycles: u64,
    /// How long the running cycle has taken so far; None between cycles.
    pub current_cycle_running_for: Option<Duration>,
    /// How long the last completed cycle took; None until one completed.
    pub last_cycle: Option<Duration>,
    /// Zend heap (`memory_get_usage(true)`) at the end of the last cycle.
    pub heap_bytes: u64,
    /// Zend heap peak (`memory_get_peak_usage(true)`) at the end of the last cycle.
    pub peak_heap_bytes: u64,
}

const _: () = assert!(std::mem::size_of::<Layout>() == PAGE_SIZE);
const _: () = assert!(std::mem::offset_of!(Layout, tasks_running) == 112);
const _: () = assert!(std::mem::offset_of!(Layout, task_pids) == 144);
const _: () = assert!(std::mem::offset_of!(Layout, progress_ns) == 400);
const _: () = assert!(std::mem::offset_of!(Layout, backtrace_asked) == 496);
const _: () = assert!(std::mem::offset_of!(Layout, backtrace_text) == 520);
const _: () = assert!(std::mem::offset_of!(Layout, reserved) == 3592);

struct Mapping {
    pages: NonNull<Layout>,
    count: usize,
}

impl Mapping {
    /// Maps `count` zeroed pages, reserving no swap for the untouched ones.
    fn new(count: usize) -> Result<Mapping, Errno> {
        let len = count.checked_mul(PAGE_SIZE).ok_or(Errno::ENOMEM)?;
        // SAFETY: an anonymous shared mapping with no address hint; the
        // result is checked against MAP_FAILED before use.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let pages = NonNull::new(address.cast::<Layout>()).ok_or(Errno::EINVAL)?;
        Ok(Mapping { pages, count })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `pages` is the start of a mapping of `count` pages this
        // value created and nothing else unmaps; no reference into it
        // outlives the Arc that owns this Mapping.
        unsafe { libc::munmap(self.pages.as_ptr().cast(), self.count * PAGE_SIZE) };
    }
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

/// A shared page; clones refer to the same mapping, which is unmapped (in
/// this process) when the last clone is dropped. A forked child keeps its
/// own inherited mapping whatever the parent does.
#[derive(Clone)]
pub struct SharedPage {
    mapping: Arc<Mapping>,
    index: usize,
}

impl std::fmt::Debug for SharedPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPage").field("flags", &self.flags()).field("cycles", &self.cycles()).finish()
    }
}

impl SharedPage {
    /// Maps a zeroed page of its own and writes the magic and version.
    /// Create it before fork; the child gets it through the program it runs.
    pub fn new() -> Result<SharedPage, Errno> {
        let page = SharedPage { mapping: Arc::new(Mapping::new(1)?), index: 0 };
        page.reset();
        Ok(page)
    }

    /// Zero flags and counters, then the header: the page as a new child
    /// must find it.
    fn reset(&self) {
        let layout = self.layout();
        for word in [
            &layout.flags,
            &layout.cycles,
            &layout.cycle_started_ns,
            &layout.last_cycle_ns,
            &layout.heap_bytes,
            &layout.peak_heap_bytes,
            &layout.recycle_reason,
            &layout.opcache_published_ns,
            &layout.opcache_used_bytes,
            &layout.opcache_free_bytes,
            &layout.opcache_hits,
            &layout.opcache_misses,
            &layout.ended_status,
            &layout.tasks_running,
            &layout.tasks_started,
            &layout.tasks_failed,
            &layout.tasks_timed_out,
            &layout.progress_ns,
            &layout.progress_calls,
            &layout.cycle_ended_ns,
            &layout.progress_note_seq,
            &layout.backtrace_asked,
            &layout.backtrace_answered,
            &layout.backtrace_length,
        ] {
            word.store(0, Ordering::Relaxed);
        }
        for word in layout.task_pids.iter().chain(&layout.reserved) {
            word.store(0, Ordering::Relaxed);
        }
        for byte in layout.progress_note.iter().chain(&layout.backtrace_text) {
            byte.store(0, Ordering::Relaxed);
        }
        layout.magic.store(MAGIC, Ordering::Relaxed);
        layout.version.store(VERSION, Ordering::Release);
    }

    fn layout(&self) -> &Layout {
        // SAFETY: `index` is below the mapping's page count (checked where
        // pages are handed out); the mapping is page-aligned, zero-filled by
        // the kernel (a valid bit pattern for atomics) and lives as long as
        // `self.mapping`.
        unsafe { &*self.mapping.pages.as_ptr().add(self.index) }
    }

    /// The address to hand to the child (`lrpm_child_spec.shared_page`).
    pub fn as_ptr(&self) -> *mut std::ffi::c_void {
        self.layout() as *const Layout as *mut std::ffi::c_void
    }

    /// Every `FLAG_*` bit the child has set.
    pub fn flags(&self) -> u64 {
        self.layout().flags.load(Ordering::Acquire)
    }

    /// True once user code in the child installed its own SIGTERM or SIGINT
    /// handler (`pcntl_signal`); the host's graceful stop still applies.
    pub fn user_replaced_stop_handler(&self) -> bool {
        self.flags() & (FLAG_USER_SIGTERM_HANDLER | FLAG_USER_SIGINT_HANDLER) != 0
    }

    /// True once a stop signal reached the child, whoever sent it: an exit 0
    /// after it is a stop, not a run that ended on its own.
    pub fn stop_signalled(&self) -> bool {
        self.flags() & FLAG_STOP_SIGNALLED != 0
    }

    /// The magic and version words (for the child, and for tests).
    pub fn header(&self) -> (u32, u32) {
        (self.layout().magic.load(Ordering::Relaxed), self.layout().version.load(Ordering::Acquire))
    }

    /// Sets flag bits, as the child does from C (tests; Rust children).
    pub fn set_flags(&self, bits: u64) {
        self.layout().flags.fetch_or(bits, Ordering::AcqRel);
    }

    /// Completed cycles.
    pub fn cycles(&self) -> u64 {
        self.layout().cycles.load(Ordering::Acquire)
    }

    /// CLOCK_MONOTONIC ns when the running cycle began, 0 between cycles.
    pub fn cycle_started_ns(&self) -> u64 {
        self.layout().cycle_started_ns.load(Ordering::Acquire)
    }

    /// Duration of the last completed cycle in ns (0 before the first).
    pub fn last_cycle_ns(&self) -> u64 {
        self.layout().last_cycle_ns.load(Ordering::Relaxed)
    }

    /// Zend heap at the end of the last cycle, bytes.
    pub fn heap_bytes(&self) -> u64 {
        self.layout().heap_bytes.load(Ordering::Relaxed)
    }

    /// Zend heap peak at the end of the last cycle, bytes.
    pub fn peak_heap_bytes(&self) -> u64 {
        self.layout().peak_heap_bytes.load(Ordering::Relaxed)
    }

    /// The cycle fields at one moment. `now_monotonic_ns` is the reader's
    /// [`monotonic_now_ns`](crate::process::monotonic_now_ns): the page holds
    /// raw CLOCK_MONOTONIC readings, which mean the same in every process.
    /// The count is loaded first (see [`Layout`] for why).
    pub fn cycle_snapshot(&self, now_monotonic_ns: u64) -> CycleSnapshot {
        let cycles = self.cycles();
        let started = self.cycle_started_ns();
        CycleSnapshot {
            cycles,
            // The child may have started the cycle after the reader read its
            // clock: that is a cycle running for no time yet.
            current_cycle_running_for: (started != 0)
                .then(|| Duration::from_nanos(now_monotonic_ns.saturating_sub(started))),
            last_cycle: (cycles > 0).then(|| Duration::from_nanos(self.last_cycle_ns())),
            heap_bytes: self.heap_bytes(),
            peak_heap_bytes: self.peak_heap_bytes(),
        }
    }

    /// The recycle reason code the worker wrote before exiting 75 (0: none).
    /// Read at the reap, before the page goes back to the pool.
    /// The worker's tasks: the count first (acquire), then the pids.
    pub fn tasks(&self) -> TaskFigures {
        let layout = self.layout();
        let running = layout.tasks_running.load(Ordering::Acquire);
        TaskFigures {
            running,
            started: layout.tasks_started.load(Ordering::Relaxed),
            failed: layout.tasks_failed.load(Ordering::Relaxed),
            timed_out: layout.tasks_timed_out.load(Ordering::Relaxed),
            pids: layout
                .task_pids
                .iter()
                .map(|pid| pid.load(Ordering::Relaxed))
                .filter(|pid| *pid > 0 && *pid <= i32::MAX as u64)
                .map(|pid| pid as i32)
                .collect(),
        }
    }

    /// The heartbeat: the last `Lrpm\progress()` (time, calls, note). The note is read under its seqlock; one
    /// being rewritten at that moment reads as empty.
    pub fn heartbeat(&self) -> Heartbeat {
        let layout = self.layout();
        let progress_ns = layout.progress_ns.load(Ordering::Acquire);
        let mut note = String::new();
        let seq = layout.progress_note_seq.load(Ordering::Acquire);
        if progress_ns != 0 && seq % 2 == 0 {
            let bytes: Vec<u8> =
                layout.progress_note.iter().map(|b| b.load(Ordering::Relaxed)).take_while(|b| *b != 0).collect();
            std::sync::atomic::fence(Ordering::Acquire);
            if layout.progress_note_seq.load(Ordering::Relaxed) == seq {
                note = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        Heartbeat { progress_ns, progress_calls: layout.progress_calls.load(Ordering::Relaxed), progress_note: note }
    }

    /// How long since the worker last showed life: a cycle began or ended,
    /// or it called `Lrpm\progress()`. None before its first cycle.
    pub fn since_activity(&self, now_monotonic_ns: u64) -> Option<Duration> {
        let layout = self.layout();
        let last = [&layout.cycle_started_ns, &layout.cycle_ended_ns, &layout.progress_ns]
            .into_iter()
            .map(|word| word.load(Ordering::Acquire))
            .max()
            .unwrap_or(0);
        (last > 0).then(|| Duration::from_nanos(now_monotonic_ns.saturating_sub(last)))
    }

    /// True once the child answers backtrace requests.
    pub fn answers_backtraces(&self) -> bool {
        self.flags() & FLAG_BACKTRACE_READY != 0
    }

    /// Stores a new backtrace request and returns its number; the caller
    /// then sends the backtrace signal.
    pub fn ask_backtrace(&self) -> u64 {
        self.layout().backtrace_asked.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The answer to request `asked` (or a later one), once written.
    pub fn backtrace_answer(&self, asked: u64) -> Option<String> {
        let layout = self.layout();
        let answered = layout.backtrace_answered.load(Ordering::Acquire);
        if answered < asked {
            return None;
        }
        let len = (layout.backtrace_length.load(Ordering::Relaxed) as usize).min(BACKTRACE_BYTES);
        let bytes: Vec<u8> = layout.backtrace_text[..len].iter().map(|b| b.load(Ordering::Relaxed)).collect();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub fn recycle_reason(&self) -> u64 {
        self.layout().recycle_reason.load(Ordering::Acquire)
    }

    /// Writes a recycle reason, as `Lrpm\Internal\set_recycle_reason()`
    /// does in C (tests; Rust children).
    pub fn set_recycle_reason(&self, code: u64) {
        self.layout().recycle_reason.store(code, Ordering::Release);
    }

    /// The status the worker is exiting with, once its PHP request has
    /// ended (shutdown functions and destructors done); None before.
    pub fn ended_status(&self) -> Option<i32> {
        let stored = self.layout().ended_status.load(Ordering::Acquire);
        stored.checked_sub(1).map(|status| status as i32)
    }

    /// Writes the ended status, as the C side does at the end of a worker's
    /// request (tests).
    pub fn set_ended_status(&self, status: i32) {
        self.layout().ended_status.store(u64::from(status as u32) + 1, Ordering::Release);
    }

    /// The OPcache figures the worker last published; None if it never did.
    /// The publication time is loaded first (stored last by the writer).
    pub fn opcache(&self) -> Option<OpcacheFigures> {
        let layout = self.layout();
        let published_ns = layout.opcache_published_ns.load(Ordering::Acquire);
        (published_ns != 0).then(|| OpcacheFigures {
            published_ns,
            used_bytes: layout.opcache_used_bytes.load(Ordering::Relaxed),
            free_bytes: layout.opcache_free_bytes.load(Ordering::Relaxed),
            hits: layout.opcache_hits.load(Ordering::Relaxed),
            misses: layout.opcache_misses.load(Ordering::Relaxed),
        })
    }

    /// Publishes OPcache figures, with the stores in the order
    /// `Lrpm\Internal\publish_opcache()` uses in C (tests; Rust children).
    pub fn publish_opcache(&self, figures: OpcacheFigures) {
        let layout = self.layout();
        layout.opcache_used_bytes.store(figures.used_bytes, Ordering::Relaxed);
        layout.opcache_free_bytes.store(figures.free_bytes, Ordering::Relaxed);
        layout.opcache_hits.store(figures.hits, Ordering::Relaxed);
        layout.opcache_misses.store(figures.misses, Ordering::Relaxed);
        layout.opcache_published_ns.store(figures.published_ns.max(1), Ordering::Release);
    }

    /// A cycle begins, as `Lrpm\Internal\next_cycle()` records it in C
    /// (tests; Rust children).
    pub fn record_cycle_start(&self, now_monotonic_ns: u64) {
        self.layout().cycle_started_ns.store(now_monotonic_ns, Ordering::Release);
    }

    /// A cycle ends, with the stores in the order `Lrpm\Internal\cycle_done()`
    /// uses in C (tests; Rust children).
    pub fn record_cycle_end(&self, now_monotonic_ns: u64, heap_bytes: u64, peak_heap_bytes: u64) {
        let layout = self.layout();
        let began = layout.cycle_started_ns.load(Ordering::Relaxed);
        layout.last_cycle_ns.store(now_monotonic_ns.saturating_sub(began), Ordering::Relaxed);
        layout.heap_bytes.store(heap_bytes, Ordering::Relaxed);
        layout.peak_heap_bytes.store(peak_heap_bytes, Ordering::Relaxed);
        layout.cycle_started_ns.store(0, Ordering::Relaxed);
        layout.cycle_ended_ns.store(now_monotonic_ns, Ordering::Relaxed);
        layout.cycles.fetch_add(1, Ordering::Release);
    }
}

/// One region of `capacity` pages, mapped once by the supervisor before its
/// first fork; each worker gets a page of it for its life.
pub struct SharedSlots {
    mapping: Arc<Mapping>,
    free: Vec<usize>,
    next: usize,
}

impl SharedSlots {
    pub fn new(capacity: usize) -> Result<SharedSlots, Errno> {
        Ok(SharedSlots { mapping: Arc::new(Mapping::new(capacity)?), free: Vec::new(), next: 0 })
    }

    /// A fresh page, or None when all `capacity` are in use.
    pub fn allocate(&mut self) -> Option<SharedPage> {
        let index = match self.free.pop() {
            Some(index) => index,
            None if self.next < self.mapping.count => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        let page = SharedPage { mapping: Arc::clone(&self.mapping), index };
        page.reset();
        Some(page)
    }

    /// Gives a page back once its child is reaped.
    pub fn release(&mut self, page: SharedPage) {
        if Arc::ptr_eq(&page.mapping, &self.mapping) {
            self.free.push(page.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_page_has_a_header_and_no_flags() {
        let page = SharedPage::new().unwrap();
        assert_eq!(page.header(), (MAGIC, VERSION));
        assert_eq!(page.flags(), 0);
        assert!(!page.user_replaced_stop_handler());
        assert_eq!(&MAGIC.to_le_bytes(), b"LRPM");
    }

    #[test]
    fn slots_are_handed_out_reset_and_reused() {
        let mut slots = SharedSlots::new(2).unwrap();
        let a = slots.allocate().unwrap();
        let b = slots.allocate().unwrap();
        assert!(slots.allocate().is_none());
        assert_ne!(a.as_ptr(), b.as_ptr());
        a.set_flags(FLAG_USER_SIGTERM_HANDLER);
        let address = a.as_ptr();
        slots.release(a);
        let again = slots.allocate().unwrap();
        assert_eq!(again.as_ptr(), address);
        assert_eq!(again.flags(), 0);
        assert_eq!(again.header(), (MAGIC, VERSION));
    }

    #[test]
    fn a_forked_child_writes_what_the_parent_reads() {
        let page = SharedPage::new().unwrap();
        // SAFETY: the child only does an atomic store and _exits; the test
        // harness's other threads are not touched in the child.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                page.set_flags(FLAG_USER_SIGINT_HANDLER);
                // SAFETY: leaving the forked test process without running
                // the harness's destructors.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap();
            }
        }
        assert!(page.user_replaced_stop_handler());
        assert_eq!(page.flags(), FLAG_USER_SIGINT_HANDLER);
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_snapshot_before_the_first_cycle_has_no_times() {
        let page = SharedPage::new().unwrap();
        let snapshot = page.cycle_snapshot(crate::process::monotonic_now_ns());
        assert_eq!(
            snapshot,
            CycleSnapshot {
                cycles: 0,
                current_cycle_running_for: None,
                last_cycle: None,
                heap_bytes: 0,
                peak_heap_bytes: 0
            }
        );
    }

    #[test]
    fn a_snapshot_tells_a_running_cycle_from_the_time_between_cycles() {
        let page = SharedPage::new().unwrap();
        page.record_cycle_start(1_000 * MS);
        let running = page.cycle_snapshot(1_250 * MS);
        assert_eq!((running.cycles, running.last_cycle), (0, None));
        assert_eq!(running.current_cycle_running_for, Some(Duration::from_millis(250)));
        // A reader whose clock read came before the child's start store.
        assert_eq!(page.cycle_snapshot(999 * MS).current_cycle_running_for, Some(Duration::ZERO));

        page.record_cycle_end(1_300 * MS, 4 << 20, 6 << 20);
        let between = page.cycle_snapshot(5_000 * MS);
        assert_eq!(
            between,
            CycleSnapshot {
                cycles: 1,
                current_cycle_running_for: None,
                last_cycle: Some(Duration::from_millis(300)),
                heap_bytes: 4 << 20,
                peak_heap_bytes: 6 << 20
            }
        );

        page.record_cycle_start(5_000 * MS);
        let second = page.cycle_snapshot(5_010 * MS);
        assert_eq!(second.cycles, 1);
        assert_eq!(second.current_cycle_running_for, Some(Duration::from_millis(10)));
        assert_eq!(second.last_cycle, Some(Duration::from_millis(300)), "the last completed one");
    }

    #[test]
    fn a_reused_slot_has_no_recycle_reason_and_no_opcache_figures() {
        let mut slots = SharedSlots::new(1).unwrap();
        let page = slots.allocate().unwrap();
        assert_eq!((page.recycle_reason(), page.opcache()), (0, None));
        page.set_recycle_reason(3);
        let figures = OpcacheFigures { published_ns: 5, used_bytes: 1 << 20, free_bytes: 2 << 20, hits: 7, misses: 1 };
        page.publish_opcache(figures);
        assert_eq!((page.recycle_reason(), page.opcache()), (3, Some(figures)));
        slots.release(page);
        let again = slots.allocate().unwrap();
        assert_eq!((again.recycle_reason(), again.opcache()), (0, None));
    }

    #[test]
    fn a_reused_slot_starts_with_no_cycles() {
        let mut slots = SharedSlots::new(1).unwrap();
        let page = slots.allocate().unwrap();
        page.record_cycle_start(10 * MS);
        page.record_cycle_end(20 * MS, 1, 2);
        page.record_cycle_start(30 * MS);
        slots.release(page);
        let again = slots.allocate().unwrap();
        assert_eq!(again.cycle_snapshot(40 * MS), SharedPage::new().unwrap().cycle_snapshot(40 * MS));
    }

    #[test]
    fn monotonic_now_is_the_clock_a_forked_child_writes_with() {
        let page = SharedPage::new().unwrap();
        let before = crate::process::monotonic_now_ns();
        // SAFETY: the child only reads the clock, does atomic stores and
        // _exits; the test harness's other threads are not touched in it.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let began = crate::process::monotonic_now_ns();
                page.record_cycle_start(began);
                page.record_cycle_end(began + 7 * MS, 3 << 20, 5 << 20);
                page.record_cycle_start(crate::process::monotonic_now_ns());
                // SAFETY: leaving the forked test process without running
                // the harness's destructors.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap();
            }
        }
        let after = crate::process::monotonic_now_ns();
        let started = page.cycle_started_ns();
        assert!(before <= started && started <= after, "{before} <= {started} <= {after}");
        let snapshot = page.cycle_snapshot(after);
        assert_eq!(snapshot.cycles, 1);
        assert_eq!(snapshot.last_cycle, Some(Duration::from_millis(7)));
        assert_eq!((snapshot.heap_bytes, snapshot.peak_heap_bytes), (3 << 20, 5 << 20));
        assert_eq!(snapshot.current_cycle_running_for, Some(Duration::from_nanos(after - started)));
    }
}
