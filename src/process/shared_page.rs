//! One page of memory shared between the supervisor and one child: the
//! child writes facts about itself (today: whether user code replaced the
//! stop handler), the supervisor reads them without a syscall. The page is
//! mapped `MAP_SHARED | MAP_ANONYMOUS` by the parent before fork, so the
//! child inherits the same physical page. The supervisor maps one region of
//! many pages once (`SharedSlots`) and hands out one page per worker, so a
//! farm of any size adds one mapping to each process, not one per worker;
//! only the pages of live workers ever take memory. Layout: `lrpm_shared_page` in
//! csrc/lrpm_shim.h (src/php checks the constants against it at compile
//! time).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use nix::errno::Errno;

/// The page size the layout is written for.
pub const PAGE_SIZE: usize = 4096;
/// `LRPM_SHARED_PAGE_MAGIC`: "LRPM" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"LRPM");
/// `LRPM_SHARED_PAGE_VERSION`: bump when a field changes meaning.
pub const VERSION: u32 = 1;
/// `LRPM_FLAG_USER_SIGTERM_HANDLER`: user code called `pcntl_signal(SIGTERM, ...)`.
pub const FLAG_USER_SIGTERM_HANDLER: u64 = 0x1;
/// `LRPM_FLAG_USER_SIGINT_HANDLER`: user code called `pcntl_signal(SIGINT, ...)`.
pub const FLAG_USER_SIGINT_HANDLER: u64 = 0x2;

/// The `#[repr(C)]` twin of `lrpm_shared_page`. Every field is written
/// atomically by the child and read atomically here.
#[repr(C)]
pub struct Layout {
    pub magic: AtomicU32,
    pub version: AtomicU32,
    pub flags: AtomicU64,
    /// Room for per-worker counters (cycle count, start of the current
    /// cycle, Zend heap size); zero until a version defines them.
    pub reserved: [AtomicU64; (PAGE_SIZE - 16) / 8],
}

const _: () = assert!(std::mem::size_of::<Layout>() == PAGE_SIZE);

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
        f.debug_struct("SharedPage").field("flags", &self.flags()).finish()
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

    /// Zero flags, then the header: the page as a new child must find it.
    fn reset(&self) {
        let layout = self.layout();
        layout.flags.store(0, Ordering::Relaxed);
        for word in &layout.reserved {
            word.store(0, Ordering::Relaxed);
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

    /// The magic and version words (for the child, and for tests).
    pub fn header(&self) -> (u32, u32) {
        (self.layout().magic.load(Ordering::Relaxed), self.layout().version.load(Ordering::Acquire))
    }

    /// Sets flag bits, as the child does from C (tests; Rust children).
    pub fn set_flags(&self, bits: u64) {
        self.layout().flags.fetch_or(bits, Ordering::AcqRel);
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
}
