//! The `matchdesk` command: a thin entry point over the CLI in `cli/`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
