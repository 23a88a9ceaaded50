//! The benchmarks' floor: an XDP program that only returns XDP_TX. Timed the
//! same way as the balancer, it measures what BPF_PROG_TEST_RUN itself costs.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
// Links the shared panic handler.
use lb_ebpf as _;

#[xdp]
pub fn xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}
