//! Rebuilds the crate when a migration changes, since `sqlx::migrate!` embeds the files at
//! compile time and Cargo does not otherwise know about them.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
