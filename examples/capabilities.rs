//! Prints what this kernel and process can do, and which mode `Mode::Auto` picks:
//! `cargo run --example capabilities`.
fn main() {
    println!("{}", dirtytrack::Capabilities::probe());
}
