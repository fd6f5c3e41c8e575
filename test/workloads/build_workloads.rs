//! Builds the test workloads and prints `name=path` for each (used by `./dev up`).

fn main() -> std::process::ExitCode {
    let built = [
        ("multitool", krustlet_test_workloads::multitool()),
        (
            "multitool-component",
            krustlet_test_workloads::multitool_component(),
        ),
        ("http-component", krustlet_test_workloads::http_component()),
        (
            "sockets-component",
            krustlet_test_workloads::sockets_component(),
        ),
    ];
    for (name, result) in built {
        match result {
            Ok(path) => println!("{name}={}", path.display()),
            Err(error) => {
                eprintln!("build-workloads: {error}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    std::process::ExitCode::SUCCESS
}
