//! The `redraft` binary: parses the command line and hands over to the library.

/// Every role allocates many short-lived buffers per request (RESP frames,
/// Raft entries, QUIC packets); mimalloc's thread-local free lists cost a
/// fraction of glibc malloc's consolidation on that pattern. Built without
/// transparent huge pages: with them an idle node's arenas grew to 800 MiB of
/// mostly empty 2 MiB pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    redraft::cli::main()
}
