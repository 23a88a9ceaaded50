//! The balancer: picks a backend for each packet to a VIP (connection table,
//! then Maglev) and forwards it IP-in-IP with XDP_TX. Everything that is not
//! for a VIP goes to the kernel. Each packet bumps exactly one reason counter.
#![no_std]
#![no_main]

mod capture;
mod encap;
mod flood;
mod icmp;
mod lookup;
mod maps;
mod process;
mod second_chance;
mod stats;

use aya_ebpf::{macros::xdp, programs::XdpContext};

use crate::process::{run, Stage};

// `#[xdp]` wraps this function in the program's entry; inlined there, the
// packet's path runs in the entry itself. Left to LLVM, a body this large
// stays a BPF subprogram called once per packet (a call, a frame, the
// callee-saved registers), which cost every path some 8 ns (bench/README).
#[xdp]
#[inline(always)]
pub fn balancer(ctx: XdpContext) -> u32 {
    run::<{ Stage::Full as u8 }>(&ctx)
}
