//! `cargo xtask`: what plain cargo cannot do.
fn main() {}
