//! Generates the gRPC client from `proto/` with protox (pure Rust: no
//! protoc needed on the machine).

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let fds = match protox::compile(
        [
            "proto/gcs_subset.proto",
            "proto/autoscaler_subset.proto",
            "proto/node_manager_subset.proto",
        ],
        ["proto"],
    ) {
        Ok(fds) => fds,
        Err(e) => {
            println!("cargo:warning=cannot compile the protos under proto/: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)
    {
        println!("cargo:warning=cannot generate the GCS client: {e}");
        std::process::exit(1);
    }
}
