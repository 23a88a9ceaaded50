//! The invariant fuzzer in the test suite: 200,000 generated and mutated
//! frames, a fresh seed each run (printed: `lb-bench fuzz --seed S`
//! replays it), zero violations allowed. Needs root and BPF.

#[test]
fn fuzz_200k_frames_without_a_violation() {
    let seed = match std::env::var("FUZZ_SEED") {
        Ok(s) => s.parse().expect("FUZZ_SEED is a number"),
        Err(_) => lb_bench::fuzz::fresh_seed(),
    };
    println!("fuzz seed {seed} (replay: lb-bench fuzz --packets 200000 --seed {seed}, or FUZZ_SEED={seed})");
    let opts = lb_bench::fuzz::Options { packets: 200_000, seed, keep: 10 };
    let report = lb_bench::fuzz::run(&opts, |_| {}).expect("fuzzer ran");
    println!("{}", report.render());
    assert_eq!(report.total_violations(), 0, "{}", report.render());
    // The run must have reached every kind of outcome, or it proves little.
    for counter in
        ["tx_encap", "tx_icmp_echo_reply", "tx_icmp_too_big", "pass_non_vip", "pass_fragment", "drop_truncated"]
    {
        assert!(report.per_counter.get(counter).copied().unwrap_or(0) > 0, "no frame reached {counter}");
    }
    assert!(report.untabled_syns > 0, "no SYN reached the SYN-flood mode");
    // Second chance, in both families (the IPv4 count includes the IPv4
    // VIP with IPv6 backends).
    let [v4, v6] = report.second_chance.second_hops;
    assert!(v4 > 0 && v6 > 0, "second hops: {v4} for IPv4 flows, {v6} for IPv6 flows; both must occur");
}
