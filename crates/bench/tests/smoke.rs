//! The benchmark harness cannot rot: every scenario runs with tiny numbers against the real
//! control plane, as part of the test suite; startup, density and churn also on both peers (a
//! kubemark hollow node and the floor). A missing kubemark fails the test, naming it.

use std::process::Command;

#[test]
fn every_scenario_runs_small() {
    let out = tempfile_path();
    let output = Command::new(env!("CARGO_BIN_EXE_krustlet-bench"))
        .args(["smoke", "--out"])
        .arg(&out)
        .output()
        .expect("run krustlet-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "krustlet-bench smoke failed:\n{stdout}\n{stderr}"
    );
    for table in [
        "startup:",
        "density:",
        "churn:",
        "cold start:",
        "http:",
        "startup: Krustlet against hollow, floor",
        "density: Krustlet against hollow, floor",
        "churn: Krustlet against hollow, floor",
    ] {
        assert!(stdout.contains(table), "no {table} table in\n{stdout}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("JSON written")).expect("JSON");
    let result = &json["result"];
    for kind in ["krustlet", "hollow", "floor"] {
        assert_eq!(
            result["startup"]["kinds"][kind]["to_running"]["count"], 3,
            "{kind}: {json}"
        );
        assert_eq!(
            result["startup"]["kinds"][kind]["serial_to_running"]["count"], 2,
            "{kind}: {json}"
        );
        assert_eq!(
            result["density"]["kinds"][kind]["pods"], 5,
            "{kind}: {json}"
        );
        let churn = &result["churn"]["kinds"][kind];
        assert!(
            churn["steps"][0]["completed"].as_u64().unwrap_or(0) > 0,
            "{kind}: {json}"
        );
        assert!(
            churn["writes_per_pod"].as_f64().unwrap_or(0.0) > 0.0,
            "{kind}: {json}"
        );
    }
    let ratio = &result["startup"]["figures"][0]["ratios"];
    for peer in ["krustlet/hollow", "krustlet/floor"] {
        assert!(ratio[peer].as_f64().unwrap_or(0.0) > 0.0, "{peer}: {json}");
    }
    assert!(
        json["result"]["cold"]["first_ms"].as_f64().unwrap_or(0.0) > 0.0,
        "{json}"
    );
    assert!(
        json["result"]["http"]["krustlet"]["requests_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{json}"
    );
    assert!(json["machine"]["cpus"].as_u64().unwrap_or(0) > 0, "{json}");
}

fn tempfile_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("krustlet-bench-smoke-{}.json", std::process::id()))
}
