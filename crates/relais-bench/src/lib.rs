//! Criterion microbenchmarks of Relais. The benchmark sources live in the
//! repository's top-level `benches/` directory (see this crate's Cargo.toml);
//! run them with `cargo bench -p relais-bench`. They are compiled, not run, in CI
//! (`cargo clippy --workspace --all-targets`).
