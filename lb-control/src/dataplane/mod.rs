//! The map writer: loads the XDP balancer and gives typed access to its maps.
//!
//! Everything that writes BPF maps goes through [`Balancer`], so the layout
//! knowledge (which ring a VIP uses, how the ring pool is addressed, how
//! counters are summed over CPUs) lives in one place. One file per concern:
//!
//! | file | holds |
//! |---|---|
//! | `load.rs` | loading, pinning, attaching and detaching objects |
//! | `limits.rs` | the sizes fixed at load time |
//! | `mmap.rs` | the `BPF_F_MMAPABLE` arrays, mapped with memmap2 |
//! | `grace.rs` | waiting for an RCU grace period (no program reads the old copy) |
//! | `vip_table.rs` | the VIPS map, the two VIP-table copies and the address filter |
//! | `rings.rs` | the Maglev ring pool |
//! | `conn.rs` | the connection table |
//! | `counters.rs` | the per-CPU counters |
//! | `flood.rs` | the SYN-flood mode's per-CPU windows |
//! | `capture.rs` | the packet capture's filter and ring |
//! | `balancer.rs` | [`Balancer`]: the maps together |
//! | `decap.rs` | [`Decap`]: the backends' program |

mod balancer;
mod capture;
mod conn;
mod counters;
mod decap;
mod flood;
mod grace;
mod limits;
mod load;
mod mmap;
mod rings;
mod vip_table;

use aya::{
    maps::{Map, MapError},
    programs::ProgramError,
    Ebpf,
};
use std::path::PathBuf;

pub use balancer::Balancer;
pub use capture::monotonic_ns;
pub use decap::Decap;
pub use flood::monotonic_coarse_ns;
pub use lb_common::{ip_to_addr, MAX_RING_SIZE};
pub use limits::Limits;
pub use load::{detach_all, link_pin, load_balancer_stages, versioned_pin_dir, XdpMode};
pub use vip_table::build_vip_table;

/// The balancer object, built from `lb-ebpf` by the build script.
pub static BALANCER_ELF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-balancer"));
/// The balancer cut short after each stage of its path, one program per
/// stage (`stage_1` ... `stage_10`, the last the whole path): the cost
/// breakdown's object (`lb-bench breakdown`), never loaded by the daemon.
pub static BALANCER_STAGES_ELF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-balancer-stages"));
/// The backends' decap object.
pub static DECAP_ELF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));
/// A program that only returns XDP_TX: the benchmarks' floor.
pub static XDP_TX_ELF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp-tx"));
/// The health probes' TC egress program (see `crate::health::tc`).
pub static HEALTH_ELF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-health"));

/// Name of the balancer's XDP program in its object.
pub const BALANCER_PROGRAM: &str = "balancer";
pub const DECAP_PROGRAM: &str = "decap";
pub const XDP_TX_PROGRAM: &str = "xdp_tx";

#[derive(thiserror::Error, Debug)]
pub enum DataplaneError {
    #[error("invalid limits: {0}")]
    Limits(String),
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program: {0}")]
    Program(#[from] ProgramError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {0} is missing from the object or has an unexpected type")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the object or is not XDP")]
    MissingProgram(&'static str),
    #[error("{what} index {index} is out of range (limit {limit})")]
    OutOfRange { what: &'static str, index: u32, limit: u32 },
    #[error("Maglev table has {got} entries, the rings hold {want}")]
    RingLength { got: usize, want: u32 },
    #[error("pinned map {name} at {path} has {found}, this config needs {want}; the limits changed since it was created: restore them, or run `lb-control detach` (drops every connection) and start again")]
    PinnedMismatch { name: &'static str, path: PathBuf, found: String, want: String },
    #[error("creating pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning map {name} again: {message}")]
    Pin { name: &'static str, message: String },
    #[error("attaching to {iface}: {source}")]
    Attach {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("XDP link of {iface}: {detail}")]
    Link { iface: String, detail: String },
    #[error("counting possible CPUs: {0}")]
    Cpus(#[source] std::io::Error),
    #[error("mapping a BPF array into memory: {0}")]
    Mmap(#[source] std::io::Error),
    #[error("waiting for running XDP programs (an RCU grace period): {0}")]
    GracePeriod(#[source] std::io::Error),
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// Takes map `name` out of a loaded object as a typed map.
fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}
