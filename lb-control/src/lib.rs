pub mod config;
pub mod dataplane;
pub mod model;
pub mod packet_builder;
