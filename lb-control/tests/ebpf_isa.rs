//! The eBPF objects are built for the v2 instruction set (lb-ebpf/.cargo/
//! config.toml): with `<`/`<=` jumps, which v1 (rustc's "generic") lacks,
//! and without v3's 32-bit jumps (v3's subregisters break packet pointers,
//! see that file). A config the build stopped reading would only show as
//! slower benchmarks; this test makes it a failure.

use lb_control::dataplane::{BALANCER_ELF, DECAP_ELF, HEALTH_ELF};

/// Instruction class and operation fields of an opcode, and their values
/// (linux/bpf_common.h, linux/bpf.h).
const BPF_CLASS_MASK: u8 = 0x07;
const BPF_OP_MASK: u8 = 0xf0;
const BPF_JMP: u8 = 0x05;
const BPF_JMP32: u8 = 0x06;
const BPF_JLT: u8 = 0xa0;
const BPF_JLE: u8 = 0xb0;
const BPF_JSLT: u8 = 0xc0;
const BPF_JSLE: u8 = 0xd0;

/// Jumps of interest in an object's programs.
struct Jumps {
    /// `<`/`<=` jumps, signed or not: v2 and later only.
    less_than: usize,
    /// Jumps of the 32-bit class: v3 and later only.
    jmp32: usize,
}

/// Counts the jumps in the object's programs only: `.text` also holds the
/// compiler's `memcpy` and friends, whose jumps would prove nothing about
/// our code.
fn program_jumps(elf: &[u8]) -> Jumps {
    let obj = aya_obj::Object::parse(elf).expect("the object parses");
    let codes: Vec<u8> = obj
        .programs
        .values()
        .map(|p| obj.functions.get(&p.function_key()).expect("every program has its function"))
        .flat_map(|f| f.instructions.iter().map(|i| i.code))
        .collect();
    assert!(!codes.is_empty(), "the object has program code");
    let class = |c: u8| c & BPF_CLASS_MASK;
    Jumps {
        less_than: codes
            .iter()
            .filter(|&&c| class(c) == BPF_JMP && matches!(c & BPF_OP_MASK, BPF_JLT | BPF_JLE | BPF_JSLT | BPF_JSLE))
            .count(),
        jmp32: codes.iter().filter(|&&c| class(c) == BPF_JMP32).count(),
    }
}

#[test]
fn programs_use_the_v2_instruction_set() {
    // One cargo run builds every object with the same profile: the
    // balancer, with the most comparisons, shows whether v2 was asked for
    // (the smaller programs may legitimately have no `<` at all).
    let balancer = program_jumps(BALANCER_ELF);
    assert!(balancer.less_than > 0, "balancer: no JLT/JLE/JSLT/JSLE jump in its programs: built for v1, not v2");
    for (name, elf) in [("balancer", BALANCER_ELF), ("decap", DECAP_ELF), ("health", HEALTH_ELF)] {
        let jmp32 = program_jumps(elf).jmp32;
        assert_eq!(jmp32, 0, "{name}: {jmp32} 32-bit jumps: built for v3 or later, not v2");
    }
}
