//! The `krustlet` command, built as a binary of this package so that its integration tests get
//! its path (`CARGO_BIN_EXE_krustlet-e2e-node`) and always run the current code.

fn main() -> std::process::ExitCode {
    krustlet::main()
}
