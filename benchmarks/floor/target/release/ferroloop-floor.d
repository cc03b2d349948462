/work/main/benchmarks/floor/target/release/ferroloop-floor: /work/main/benchmarks/floor/src/main.rs
