//! The price of one random read in a region the size of a data-plane table:
//! a pointer chase (each read's address comes from the read before, so
//! nothing overlaps) through 64-byte nodes in a random cycle. With 4 KiB
//! pages, as the kernel gives BPF arrays (vmalloc), and, where transparent
//! huge pages can be had, with 2 MiB pages for contrast. This is the
//! physical cost under the 512-VIP row (bench/README, "Where the
//! nanoseconds go"): a new flow's Maglev slot is a random one of a ring
//! pool far larger than the caches.

use std::time::Instant;

use anyhow::{bail, Result};
use lb_bench::fuzz::Rng;

/// One region's figure.
pub struct Latency {
    pub mib: usize,
    pub huge_pages: bool,
    pub ns_per_read: f64,
}

/// Bytes per node: one cache line, so every read is its own line.
const NODE: usize = 64;

/// An anonymous mapping, unmapped on drop.
struct Region {
    ptr: *mut u64,
    bytes: usize,
}

impl Region {
    fn new(bytes: usize, huge_pages: bool) -> Result<Self> {
        // SAFETY: a fresh private anonymous mapping; no file, no address hint.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!("mmap of {bytes} bytes: {}", std::io::Error::last_os_error());
        }
        let advice = if huge_pages { libc::MADV_HUGEPAGE } else { libc::MADV_NOHUGEPAGE };
        // SAFETY: advice on the mapping just made, whole.
        if unsafe { libc::madvise(ptr, bytes, advice) } != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: the mapping just made.
            unsafe { libc::munmap(ptr, bytes) };
            bail!("madvise: {e}");
        }
        Ok(Self { ptr: ptr.cast(), bytes })
    }

    fn nodes(&mut self) -> &mut [u64] {
        // SAFETY: the mapping is `bytes` long, page-aligned, ours alone, and
        // zero-filled (a valid u64 everywhere).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes / 8) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}

/// Whether the kernel hands out transparent huge pages to `madvise` callers.
pub fn huge_pages_available() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
}

/// Mean ns of one dependent random read in a `mib` MiB region.
pub fn measure(mib: usize, huge_pages: bool, reads: usize) -> Result<Latency> {
    let bytes = mib << 20;
    let mut region = Region::new(bytes, huge_pages)?;
    let words = region.nodes();
    let count = bytes / NODE;
    let stride = NODE / 8;
    // Sattolo's shuffle: one cycle through every node, in random order.
    let mut order: Vec<u32> = (0..count as u32).collect();
    let mut rng = Rng::new(0x6c62_2d62_656e_6368);
    for i in (1..count).rev() {
        order.swap(i, rng.below(i));
    }
    for i in 0..count {
        words[order[i] as usize * stride] = order[(i + 1) % count] as u64;
    }
    let chase = |words: &[u64], start: u64, n: usize| {
        let mut at = start;
        for _ in 0..n {
            // SAFETY: every stored index is below `count`.
            at = unsafe { std::ptr::read_volatile(words.as_ptr().add(at as usize * stride)) };
        }
        at
    };
    let warm = chase(words, 0, reads / 4);
    let started = Instant::now();
    let end = chase(words, warm, reads);
    let ns = started.elapsed().as_nanos() as f64 / reads as f64;
    std::hint::black_box(end);
    Ok(Latency { mib, huge_pages, ns_per_read: ns })
}

/// Every size, 4 KiB pages and (when available) 2 MiB pages.
pub fn run(sizes: &[usize], reads: usize) -> Result<Vec<Latency>> {
    let mut out = Vec::new();
    for &mib in sizes {
        out.push(measure(mib, false, reads)?);
        if huge_pages_available() {
            out.push(measure(mib, true, reads)?);
        }
    }
    Ok(out)
}

pub fn lines(figures: &[Latency]) -> Vec<String> {
    let mut lines = vec![
        "one dependent random read (pointer chase, 64-byte nodes in one random cycle)".to_string(),
        format!("{:>10}  {:>10}  {:>8}", "region", "pages", "ns/read"),
    ];
    for l in figures {
        let pages = if l.huge_pages { "2 MiB THP" } else { "4 KiB" };
        lines.push(format!("{:>6} MiB  {:>10}  {:>8.1}", l.mib, pages, l.ns_per_read));
    }
    lines
}
