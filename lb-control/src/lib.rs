pub mod config;
pub mod dataplane;
pub mod engine;
pub mod maglev;
pub mod model;
pub mod netlink;
pub mod packet_builder;
pub mod state;
