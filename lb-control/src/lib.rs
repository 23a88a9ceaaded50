pub mod dataplane;
pub mod packet_builder;
