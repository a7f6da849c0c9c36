//! Compiles the built-in policies in `plugins/` to components.

fn main() {
    let packages = orchestrator_guest_build::BUILTIN_GUESTS;
    let watch = ["plugins", "crates/plugin-sdk", "wit"];
    match orchestrator_guest_build::build_guests(packages, &watch) {
        Ok(paths) => {
            for (package, path) in packages.iter().zip(paths) {
                let var = package.replace('-', "_").to_uppercase();
                println!("cargo:rustc-env=BUILTIN_{var}_WASM={}", path.display());
            }
        }
        Err(e) => {
            println!("cargo:warning={e}");
            std::process::exit(1);
        }
    }
}
