//! The `krustlet` binary.

fn main() -> std::process::ExitCode {
    krustlet::main()
}
