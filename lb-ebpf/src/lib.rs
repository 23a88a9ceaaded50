//! Code shared by the XDP programs: header layouts, the one bounds-checked
//! packet accessor, the parser and checksum helpers. Maps live in each
//! program's own crate root so a program only creates the maps it uses.
#![no_std]

pub mod csum;
pub mod hdr;
pub mod packet;
pub mod parse;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never called.
    loop {}
}
