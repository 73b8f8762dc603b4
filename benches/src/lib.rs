//! Home of the workspace's criterion benchmarks (see `benches/`); `cargo xtask bench` runs them.
