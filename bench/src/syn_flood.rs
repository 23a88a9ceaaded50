//! The SYN-flood mix of part 1: a SYN of a new flow per call with every
//! CPU's window over a low threshold, so each timed SYN takes the flood
//! path (forwarded by the ring, no connection-table entry). The windows are
//! set over the threshold before every round, so a round that crosses a
//! second boundary does not table its first SYN.

use std::net::Ipv4Addr;

use anyhow::Result;
use lb_common::{LbConfig, Stat, SynFloodState, IPPROTO_TCP};
use lb_control::dataplane::{monotonic_coarse_ns, Balancer};
use lb_testkit::packet_builder as pb;

use crate::dataplane::{forwarding, time_rounds, Floor, Mix, MixResult};

/// The mix's name (its target row matches "syn flood").
pub const NAME: &str = "ipv4 tcp syn flood (untabled)";

/// The threshold while the mix runs: any flow beyond the first of a
/// window is over it.
const THRESHOLD: u32 = 1;

/// `distinct` SYNs of flows never seen (clients apart from the other
/// mixes').
pub fn mix(distinct: u32) -> Mix {
    let frames = (0..distinct)
        .map(|i| {
            let client = Ipv4Addr::from(0xc600_0000u32.wrapping_add(i.wrapping_mul(2_654_435_761)));
            let vip = Ipv4Addr::new(10, 0, 0, 10);
            let seg = pb::tcp(client.into(), vip.into(), 1024 + (i % 60000) as u16, 80, pb::TCP_SYN, &[]);
            let ip = pb::ipv4(client, vip, IPPROTO_TCP, &seg, &pb::V4::default());
            pb::eth([0x02, 0, 0, 0, 0, 0x02], [0x02, 0, 0, 0, 0, 0x03], 0x0800, &ip)
        })
        .collect();
    Mix { name: NAME, frames, path: Stat::SynFloodUntabled, warm: false }
}

/// Every CPU's window: current and far over [`THRESHOLD`].
fn flood_now(bal: &mut Balancer) -> Result<()> {
    bal.set_syn_flood_windows(SynFloodState { window_start_ns: monotonic_coarse_ns(), new_flows: 1 << 32 })?;
    Ok(())
}

/// Times the mix like `dataplane::run_mix`, the windows set over the
/// threshold before each round; verified when every timed packet bumped
/// both `syn_flood_untabled` and `tx_encap` and nothing was tabled.
pub fn run_mix(bal: &mut Balancer, floor: &mut Floor, mix: &Mix, rounds: u32, calls: u32) -> Result<MixResult> {
    bal.set_config(&LbConfig { syn_flood_threshold: THRESHOLD, ..forwarding() })?;
    let untabled = bal.stat(Stat::SynFloodUntabled)?;
    let encap = bal.stat(Stat::TxEncap)?;
    let entries = bal.conn_count();
    let timed = time_rounds(bal, floor, &mix.frames, rounds, calls, flood_now)?;
    let packets = rounds as u64 * calls as u64;
    let verified = bal.stat(Stat::SynFloodUntabled)?.packets - untabled.packets == packets
        && bal.stat(Stat::TxEncap)?.packets - encap.packets == packets
        && bal.conn_count() == entries;
    bal.set_config(&forwarding())?;
    Ok(timed.result(mix.name, verified))
}
