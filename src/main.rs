//! The `matchdesk` command: a thin entry point over the CLI in `cli/`.

mod cli;

/// mimalloc instead of the system allocator: imports and ingests allocate and free millions of
/// small strings, often on different threads, where glibc's allocator contends on its arena
/// locks (measured in docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
