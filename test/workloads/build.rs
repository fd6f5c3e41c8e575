//! Generates the C bindings of the http workload's world (`wit/http.wit`) with the
//! `wit-bindgen-c` library (as `wit-bindgen c` would): `http_workload.{c,h}` and
//! `http_workload_component_type.o` in `OUT_DIR`, which `lib.rs` includes.

use std::path::PathBuf;

use wit_bindgen_core::wit_parser::Resolve;

fn main() {
    println!("cargo:rerun-if-changed=wit");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_path("wit").expect("wit/ parses");
    let world = resolve
        .select_world(&[package], Some("http-workload"))
        .expect("wit/http.wit has the world http-workload");
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&resolve, world, &mut files)
        .expect("C bindings");
    for (name, bytes) in files.iter() {
        std::fs::write(out.join(name), bytes).expect("write the bindings to OUT_DIR");
    }
}
