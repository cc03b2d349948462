/work/main/benchmarks/floor/target/release/deps/ferroloop_floor-c55ca1af9d693bba.d: src/main.rs

/work/main/benchmarks/floor/target/release/deps/ferroloop_floor-c55ca1af9d693bba: src/main.rs

src/main.rs:
