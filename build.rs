//! Sets `cfg(dirtytrack_own_build)` when the crate is built from inside its own repository
//! (`.cargo/config.toml` sets `DIRTYTRACK_OWN_BUILD=1` there). `src/lib.rs` refuses the
//! `testing` feature without it: a feature can be turned on by anything in a dependency graph,
//! an environment variable set by this repository's cargo configuration cannot.

fn main() {
    println!("cargo:rerun-if-env-changed=DIRTYTRACK_OWN_BUILD");
    if std::env::var("DIRTYTRACK_OWN_BUILD").as_deref() == Ok("1") {
        println!("cargo:rustc-cfg=dirtytrack_own_build");
    }
}
