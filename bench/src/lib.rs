//! The benchmarks' library part: what tests call as well as `lb-bench`.
//! Today that is the invariant fuzzer (`lb-bench fuzz`).

pub mod fuzz;
