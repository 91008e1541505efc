//! Prints the diagnostics for a config file: `cargo run -p lockstep-config --example validate -- FILE`.
fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "lockstep.toml".into());
    match lockstep_config::load(std::path::Path::new(&path)) {
        Ok(config) => println!("{config:#?}"),
        Err(errors) => {
            println!("{errors}\n");
            println!("{}", errors.render_fancy(false));
        }
    }
}
