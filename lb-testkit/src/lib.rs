//! Helpers for the fixture tests, the benchmarks and the namespace lab: a
//! frame builder (`packet_builder`) and network namespaces (`netns`). A
//! dev-dependency of lb-control, so the daemon never links them.

pub mod netns;
pub mod packet_builder;
