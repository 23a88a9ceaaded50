//! The one way the programs touch packet bytes: every read and write goes
//! through [`ptr_at`], which proves to the verifier (and to us) that the whole
//! object lies inside the packet.

use aya_ebpf::programs::XdpContext;

/// A pointer to a `T` at `offset` bytes into the packet, or `None` when the
/// packet is too short to hold it.
///
/// Prefer types of two bytes or more: LLVM rewrites the one-byte check
/// `p + 1 > end` as `p >= end`, from which the verifier learns no range.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// A `T` at an even address, as every header is: frames start at an even
/// address (the kernel's headroom, XDP_PACKET_HEADROOM plus NET_IP_ALIGN,
/// is even, the verifier's own alignment model assumes as much, and this
/// project only moves a frame's start by even amounts), and every header
/// offset is even (Ethernet 14, a VLAN tag 4, IP and extension headers in
/// 4- and 8-byte units). Reading through it lets LLVM use 2-byte
/// accesses: an unaligned read or write (`read_unaligned`) is split into
/// single bytes by the BPF backend, each with its shift and or.
#[repr(C, packed(2))]
#[derive(Clone, Copy)]
struct Even<T: Copy>(T);

/// Reads a `T` at `offset` (even, see [`Even`]), if the packet holds it.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: `ptr_at` proved the `T` is inside the packet; the address is
    // even (see `Even`) and `Even<T>` asks for no more.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.cast::<Even<T>>().read().0 })
}

/// Writes `value` at `offset` (even, see [`Even`]); `None` if the packet is
/// too short.
#[inline(always)]
pub fn write<T: Copy>(ctx: &XdpContext, offset: usize, value: T) -> Option<()> {
    // SAFETY: as in `read`.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.cast::<Even<T>>().write(Even(value)) })
}

/// Length of the packet in bytes.
#[inline(always)]
pub fn len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// Copies the first `n` bytes of the packet (1..=`buf.len()`, checked
/// here so the verifier sees the bound) into `buf`; `None` if the packet is
/// shorter.
#[inline(always)]
pub fn load_head(ctx: &XdpContext, buf: &mut [u8; 256], n: u32) -> Option<()> {
    // Opaque to LLVM, so the check below stays for the verifier (the
    // callers' own bounds would let LLVM drop it, and the verifier does
    // not follow them).
    let n = core::hint::black_box(n);
    if n == 0 || n > 256 {
        return None;
    }
    // SAFETY: the helper checks the packet's bounds; `buf` holds `n` bytes.
    let rc = unsafe { aya_ebpf::helpers::bpf_xdp_load_bytes(ctx.ctx, 0, buf.as_mut_ptr().cast(), n) };
    (rc == 0).then_some(())
}

/// Grows (`delta < 0`) or shrinks the front of the packet. Every pointer
/// taken before is invalid afterwards.
#[inline(always)]
pub fn adjust_head(ctx: &XdpContext, delta: i32) -> Option<()> {
    // SAFETY: the helper checks the headroom itself.
    let rc = unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(ctx.ctx, delta) };
    (rc == 0).then_some(())
}

/// Grows or shrinks the end of the packet.
#[inline(always)]
pub fn adjust_tail(ctx: &XdpContext, delta: i32) -> Option<()> {
    // SAFETY: the helper checks the tailroom itself.
    let rc = unsafe { aya_ebpf::helpers::bpf_xdp_adjust_tail(ctx.ctx, delta) };
    (rc == 0).then_some(())
}

/// Writes an Ethernet header (and the VLAN tag, when there is one) at the
/// start of the packet; returns the offset of the L3 header.
#[inline(always)]
pub fn write_eth(
    ctx: &XdpContext,
    dst: [u8; 6],
    src: [u8; 6],
    vlan: Option<crate::parse::VlanTag>,
    ether_type: u16,
) -> Option<usize> {
    use crate::hdr::{EthHdr, VlanHdr, ETH_HLEN, VLAN_HLEN};
    match vlan {
        Some(tag) => {
            write(ctx, 0, EthHdr { dst, src, proto: tag.tpid })?;
            write(ctx, ETH_HLEN, VlanHdr { tci: tag.tci, proto: ether_type.to_be() })?;
            Some(ETH_HLEN + VLAN_HLEN)
        }
        None => {
            write(ctx, 0, EthHdr { dst, src, proto: ether_type.to_be() })?;
            Some(ETH_HLEN)
        }
    }
}
