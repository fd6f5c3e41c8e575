//! Generates the C bindings of the test workloads' worlds in `wit/` with the `wit-bindgen-c`
//! library (as `wit-bindgen c` would), into `OUT_DIR`, which `lib.rs` includes:
//!
//! - `http-workload` (`wit/http.wit`): `http_workload.{c,h}`, `http_workload_component_type.o`
//! - `sockets-workload` (`wit/sockets.wit`): `sockets_workload.{c,h}`,
//!   `sockets_workload_component_type.o`
//!
//! Every file a world generates is named after the world, so the sets cannot overwrite each
//! other in `OUT_DIR` (checked below); each set is compiled into its own module, so their C
//! symbols (which share the `wasi_*` interface names) never meet in one link.

use std::collections::BTreeSet;
use std::path::PathBuf;

use wit_bindgen_core::wit_parser::Resolve;

const WORLDS: &[&str] = &["http-workload", "sockets-workload"];

fn main() {
    println!("cargo:rerun-if-changed=wit");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_path("wit").expect("wit/ parses");
    let mut written = BTreeSet::new();
    for name in WORLDS {
        let world = resolve
            .select_world(&[package], Some(name))
            .unwrap_or_else(|e| panic!("wit/ has no world {name}: {e:#}"));
        let mut files = wit_bindgen_core::Files::default();
        wit_bindgen_c::Opts::default()
            .build()
            .generate(&resolve, world, &mut files)
            .unwrap_or_else(|e| panic!("C bindings of {name}: {e:#}"));
        for (file, bytes) in files.iter() {
            assert!(
                written.insert(file.to_owned()),
                "world {name} generates {file}, which another world generated too"
            );
            std::fs::write(out.join(file), bytes).expect("write the bindings to OUT_DIR");
        }
    }
}
