//! Hands memory the allocator keeps back to the operating system, at the two moments when the
//! process has just freed a lot of it: a configuration parsed at start, and one parsed by a
//! reload.
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
