//! Gives the shared library its SONAME, `libdirtytrack.so.<major>`, so that programs linked
//! against it load any later compatible version (`capi/Makefile` installs
//! `libdirtytrack.so.<version>` with the `.so.<major>` and `.so` symlinks).

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libdirtytrack.so.{major}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
