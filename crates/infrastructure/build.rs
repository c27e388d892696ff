//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the
//! migrations directories at compile time, and cargo does not watch them.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
