//! Handing the memory a batch freed back to the operating system before the next batch, and
//! the allocator settings that keep a batch's large buffers out of malloc's arenas.
//!
//! A run's live heap stays at a few batches whatever the number of records, but glibc's
//! malloc keeps what a batch freed in its arenas, fragmented among the small allocations of
//! the next batches (a source that builds each record as JSON makes millions of them), so the
//! process's resident memory grew with the run's length. Measured on a 1,000,000-row CSV into
//! an existing PostgreSQL table: 27 MiB of live heap at the peak (heaptrack), 130 MiB resident.
//! `malloc_trim` after each batch returns the free pages of every arena to the system.
//!
//! What trimming cannot return is a page that still holds one live allocation beside freed
//! ones. glibc serves an allocation of at least the mmap threshold with its own mapping, but
//! raises that threshold (up to 32 MiB) each time such a mapping is freed, so after the first
//! batch a batch's column buffers (hundreds of KiB to a few MiB each) come from the arenas and
//! share pages with small allocations. [`tune_allocator`] fixes the threshold at 128 KiB and
//! caps the arenas at two. Measured on a cdc run applying one transaction of 170,000 changes
//! (1M-row table, SQLite state): peak RSS 78.6 and 80.2 MiB before, 68.1 and 69.0 MiB after.
//!
//! Invariants:
//! - Both only change how free memory is kept: nothing live is touched, and on other C
//!   libraries (where the calls do not exist) they do nothing.
//! - The settings apply to the whole process, plugins included (they allocate with the same
//!   C library), and are made before the process starts any thread.

/// Returns the allocator's free memory to the operating system.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it walks the allocator's own free lists under
    // the allocator's locks and leaves every live allocation where it is.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The mmap threshold [`tune_allocator`] fixes: glibc's initial value, kept from growing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Arenas [`tune_allocator`] allows, instead of glibc's eight a core: a run has a handful of
/// threads, and each extra arena keeps partly used pages of its own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 2;

/// Keeps large buffers in mappings of their own and the arenas few (see the module's header).
/// To be called at the start of `main`, before any thread exists.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters, under its own lock; the
    // caller runs before any other thread allocates.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}
