//! Types shared by the XDP programs (`lb-ebpf`) and the control plane
//! (`lb-control`): map keys and values, flags, limits, map names and counter
//! indices.
//!
//! Everything here is `#[repr(C)]` with explicit padding so both sides agree
//! on the byte layout. Addresses and ports are kept in network byte order:
//! the data plane copies them from packets without conversion.
//!
//! Words: a *real* is a data-plane backend slot (an index into `REALS`);
//! the config, the API and the operator speak of *backends*. See [`Real`]
//! for how the two map onto each other.
#![no_std]

pub mod addr;
pub mod capture;
pub mod config;
pub mod conn;
pub mod consts;
pub mod hash;
pub mod health;
pub mod stats;
pub mod vip;

pub use addr::*;
pub use capture::*;
pub use config::*;
pub use conn::*;
pub use consts::*;
pub use hash::*;
pub use health::*;
pub use stats::{Action, Counter, DecapStat, ProbeStat, Stat};
pub use vip::*;
