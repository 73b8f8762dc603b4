//! Home of the workspace's criterion benchmarks (see `benches/`); `cargo xtask bench` runs them.

use std::path::PathBuf;

pub mod load;

/// Where figures a benchmark binary measures itself (memory, paired ratios) go, for
/// `cargo xtask bench`'s summary: `<target>/criterion/figures/`.
pub fn figures_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("criterion/figures")
}

/// Prints `figures` and writes them as `<file>.json`: a list of `{"name", "value"}` objects,
/// what `cargo xtask bench` reads back (its `Figure`). A value that is not a finite number
/// is written as `null`, which the reader refuses, as it should.
pub fn write_figures(file: &str, figures: &[(String, f64)]) -> std::io::Result<()> {
    for (name, value) in figures {
        println!("{name}: {value:.3}");
    }
    let dir = figures_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{file}.json")), figures_json(figures))
}

fn figures_json(figures: &[(String, f64)]) -> String {
    let list: Vec<serde_json::Value> = figures
        .iter()
        .map(|(name, value)| serde_json::json!({ "name": name, "value": value }))
        .collect();
    serde_json::Value::Array(list).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn figures_are_a_json_list_of_name_and_value() {
        let json = super::figures_json(&[
            ("ratio \"paired\"".to_string(), 1.5),
            ("bytes/msg".to_string(), 96.0),
        ]);
        assert_eq!(
            json,
            r#"[{"name":"ratio \"paired\"","value":1.5},{"name":"bytes/msg","value":96.0}]"#
        );
    }
}
