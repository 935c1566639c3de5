//! The `runbox` binary: everything is in the library (`runbox_cli`).

fn main() -> std::process::ExitCode {
    runbox_cli::main()
}
