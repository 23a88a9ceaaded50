//! The eBPF objects are built for the v2 instruction set (lb-ebpf/.cargo/
//! config.toml): with `<`/`<=` jumps, which v1 (rustc's "generic") lacks,
//! and without v3's 32-bit jumps (v3's subregisters break packet pointers,
//! see that file). A config the build stopped reading would only show as
//! slower benchmarks; this test makes it a failure.

use lb_control::dataplane::{BALANCER_ELF, DECAP_ELF, HEALTH_ELF};

/// Instruction classes and jump operations (linux/bpf_common.h, bpf.h).
const BPF_JMP: u8 = 0x05;
const BPF_JMP32: u8 = 0x06;
const BPF_JLT: u8 = 0xa0;
const BPF_JLE: u8 = 0xb0;
const BPF_JSLT: u8 = 0xc0;
const BPF_JSLE: u8 = 0xd0;

/// (jumps only v2 and later have, 32-bit jumps) in the object's code.
fn jump_kinds(elf: &[u8]) -> (usize, usize) {
    let obj = aya_obj::Object::parse(elf).expect("the object parses");
    let codes: Vec<u8> = obj.functions.values().flat_map(|f| f.instructions.iter().map(|i| i.code)).collect();
    assert!(!codes.is_empty(), "the object has code");
    let v2 = codes
        .iter()
        .filter(|&&c| c & 0x07 == BPF_JMP && matches!(c & 0xf0, BPF_JLT | BPF_JLE | BPF_JSLT | BPF_JSLE))
        .count();
    let jmp32 = codes.iter().filter(|&&c| c & 0x07 == BPF_JMP32).count();
    (v2, jmp32)
}

#[test]
fn programs_use_the_v2_instruction_set() {
    for (name, elf) in [("balancer", BALANCER_ELF), ("decap", DECAP_ELF), ("health", HEALTH_ELF)] {
        let (v2, jmp32) = jump_kinds(elf);
        assert!(v2 > 0, "{name}: no JLT/JLE/JSLT/JSLE jump: built for v1, not v2");
        assert_eq!(jmp32, 0, "{name}: {jmp32} 32-bit jumps: built for v3 or later, not v2");
    }
}
