//! Home of the workspace's criterion benchmarks (see `benches/`); `cargo xtask bench` runs them.

use std::path::PathBuf;

/// Where figures a benchmark binary measures itself (memory, paired ratios) go, for
/// `cargo xtask bench`'s summary: `<target>/criterion/figures/`.
pub fn figures_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("criterion/figures")
}

/// Prints `figures` and writes them as `<file>.json` (a list of `{name, value}`).
pub fn write_figures(file: &str, figures: &[(String, f64)]) -> std::io::Result<()> {
    let mut json = String::from("[");
    for (i, (name, value)) in figures.iter().enumerate() {
        println!("{name}: {value:.3}");
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!("{{\"name\":{name:?},\"value\":{value}}}"));
    }
    json.push(']');
    let dir = figures_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{file}.json")), json)
}
