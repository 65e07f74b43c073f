//! Decides whether lock-order detection is compiled in, as `cfg(palisade_detect)`.
//!
//! On with the `detect` feature (default) in builds with debug assertions, or with the
//! `detect-release` feature in any build; always off under `--cfg palisade_loom`, whose models
//! check the lock protocols themselves.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(palisade_detect)");
    println!("cargo::rerun-if-changed=build.rs");
    let set = |name: &str| std::env::var_os(name).is_some();
    let loom = set("CARGO_CFG_PALISADE_LOOM");
    let debug = set("CARGO_CFG_DEBUG_ASSERTIONS");
    let wanted = set("CARGO_FEATURE_DETECT_RELEASE") || (set("CARGO_FEATURE_DETECT") && debug);
    if wanted && !loom {
        println!("cargo::rustc-cfg=palisade_detect");
    }
}
