//! Compiles the test guests and the example policy to components.

const GUESTS: &[&str] = &[
    "guest-infinite-loop",
    "guest-memory-bomb",
    "guest-panic",
    "guest-sandbox-probe",
    "guest-chatty",
    "guest-wrong-world",
    "guest-wrong-version",
    "accelerator-readiness",
];

fn main() {
    let watch = [
        "crates/test-plugins/guests",
        "examples/accelerator-readiness",
        "crates/plugin-sdk",
        "wit",
    ];
    match orchestrator_guest_build::build_guests(GUESTS, &watch) {
        Ok(paths) => {
            for (package, path) in GUESTS.iter().zip(paths) {
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
