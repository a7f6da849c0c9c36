//! Compiles the test guests and the example policy to components.

fn main() {
    let watch = [
        "crates/test-plugins/guests",
        "examples/accelerator-readiness",
        "crates/plugin-sdk",
        "wit",
    ];
    let guests = orchestrator_guest_build::TEST_GUESTS;
    match orchestrator_guest_build::build_guests(guests, &watch) {
        Ok(paths) => {
            for (package, path) in guests.iter().zip(paths) {
                let var = package.replace('-', "_").to_uppercase();
                println!("cargo:rustc-env=TEST_PLUGIN_{var}={}", path.display());
            }
        }
        Err(e) => {
            println!("cargo:warning={e}");
            std::process::exit(1);
        }
    }
}
