//! Benchmarks of the AESP crates live in `benches/`; this library is empty.
