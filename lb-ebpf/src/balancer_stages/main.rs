//! The balancer cut short after each stage of its path, for the cost
//! breakdown (`lb-bench breakdown`, bench/README "Where the nanoseconds
//! go"): the balancer's own modules, one XDP program per
//! [`process::Stage`]. A separate object that only the benchmark loads
//! (sharing the balancer's maps through their pins); the daemon never
//! loads it.
#![no_std]
#![no_main]

#[path = "../balancer/capture.rs"]
mod capture;
#[path = "../balancer/encap.rs"]
mod encap;
#[path = "../balancer/flood.rs"]
mod flood;
#[path = "../balancer/icmp.rs"]
mod icmp;
#[path = "../balancer/lookup.rs"]
mod lookup;
#[path = "../balancer/maps.rs"]
mod maps;
#[path = "../balancer/process.rs"]
mod process;
#[path = "../balancer/second_chance.rs"]
mod second_chance;
#[path = "../balancer/stats.rs"]
mod stats;

use aya_ebpf::{macros::xdp, programs::XdpContext};

use crate::process::{run, Stage};

/// One program per stage, named `stage_<n>` after [`Stage`]'s value.
macro_rules! stages {
    ($($name:ident = $stage:ident),* $(,)?) => {
        $(
            #[xdp]
            #[inline(always)]
            pub fn $name(ctx: XdpContext) -> u32 {
                run::<{ Stage::$stage as u8 }>(&ctx)
            }
        )*
    };
}

stages!(
    stage_1 = Capture,
    stage_2 = Config,
    stage_3 = L3,
    stage_4 = L4,
    stage_5 = Hash,
    stage_6 = Vip,
    stage_7 = Choose,
    stage_8 = RealCounter,
    stage_9 = Encap,
    stage_10 = Full,
);
