//! The process's memory as the operating system counts it: what the allocator keeps back is
//! handed back at the two moments when the process has just freed a lot of it (a configuration
//! parsed at start, and one parsed by a reload), and transparent huge pages are turned off
//! ([`turn_off_transparent_huge_pages`]).
//!
//! The `portcullis` binary allocates with mimalloc, which returns freed pages to the system
//! only later, as further allocations on the same thread come by. The TOML tree of a large
//! configuration is many times the size of the routes compiled from it (10,000 routes with a
//! policy each: about 190 MB of tables for 20 MB of routes); parsed and dropped by a process
//! that then waits for traffic, all of it would stay resident until the first requests.

/// Returns the memory the calling thread's allocator heap holds free, and every page of
/// mimalloc's arenas that no allocation uses, to the operating system. A few milliseconds of
/// the calling thread; call it where a large structure was just dropped, not per request.
pub fn return_freed_memory() {
    // SAFETY: `mi_collect` takes no pointer and touches only mimalloc's own state; mimalloc
    // documents it as callable from any thread at any time. Without mimalloc as the global
    // allocator (the library's tests) it only finds nothing to return.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// Turns transparent huge pages off for this process, before it allocates much.
///
/// mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`). The kernel then backs a
/// 2 MiB range with a huge page at a fault, and its khugepaged thread, scanning a few MB of
/// address space every ten seconds, later collapses every range that holds a single used 4 KiB
/// page into a whole resident huge page: RSS stepped up by ~10 MB about ten minutes into every
/// soak (the time the scan took to reach the heap), with no allocation behind it, and stayed.
/// A proxy's heap of small, short-lived objects gains little from huge pages; a predictable
/// RSS matters more. Where that cannot be done (not Linux, or the kernel refuses), the process
/// runs as before.
pub fn turn_off_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
}
