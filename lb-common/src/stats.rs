//! Indices of the global counters (`STATS` and `DECAP_STATS` per-CPU arrays).
//!
//! Every action and every pass/drop reason has its own counter, so an
//! operator can always tell why a packet went where it went.

/// What the data plane finally did with a packet a counter stands for.
/// Action totals are sums of their reasons' counters, so each packet bumps
/// one reason counter only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Tx,
    Pass,
    Drop,
    /// An event, not a final action (e.g. a connection-table miss).
    Event,
}

impl Action {
    pub const fn name(self) -> &'static str {
        match self {
            Action::Tx => "tx",
            Action::Pass => "pass",
            Action::Drop => "drop",
            Action::Event => "event",
        }
    }
}

macro_rules! counters {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = ($label:literal, $action:ident),)+ }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every counter, in index order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// Number of counters: the size of the stats array.
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// Stable snake_case name, used in metrics and the API.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            /// The action this counter's packets took. Always inlined: the
            /// balancer asks once per packet, and left to LLVM (with a
            /// second caller, the capture) it became a BPF call on every
            /// packet's path.
            #[inline(always)]
            pub const fn action(self) -> Action {
                match self {
                    $($name::$variant => Action::$action,)+
                }
            }
        }
    };
}

counters! {
    /// Balancer counters.
    Stat {
        // Why packets were transmitted.
        TxEncap = ("tx_encap", Tx),
        TxIcmpEchoReply = ("tx_icmp_echo_reply", Tx),
        TxIcmpTooBig = ("tx_icmp_too_big", Tx),
        // Why packets were passed to the kernel.
        PassNotReady = ("pass_not_ready", Pass),
        PassNonIp = ("pass_non_ip", Pass),
        PassNonVip = ("pass_non_vip", Pass),
        PassFragment = ("pass_fragment", Pass),
        PassUnsupportedProto = ("pass_unsupported_proto", Pass),
        PassIpv6ExtUnsupported = ("pass_ipv6_ext_unsupported", Pass),
        PassIcmpOther = ("pass_icmp_other", Pass),
        // Why packets were dropped.
        DropTruncated = ("drop_truncated", Drop),
        DropBadVersion = ("drop_bad_version", Drop),
        DropBadIhl = ("drop_bad_ihl", Drop),
        DropBadTotalLen = ("drop_bad_total_len", Drop),
        DropBadL4Header = ("drop_bad_l4_header", Drop),
        DropNoBackend = ("drop_no_backend", Drop),
        DropUnknownReal = ("drop_unknown_real", Drop),
        DropFamilyMismatch = ("drop_family_mismatch", Drop),
        DropTooBig = ("drop_too_big", Drop),
        DropHeadroom = ("drop_headroom", Drop),
        // Connection table activity (not actions).
        ConnMiss = ("conn_miss", Event),
        ConnStale = ("conn_stale", Event),
        ConnEvicted = ("conn_evicted", Event),
        IcmpErrorForwarded = ("icmp_error_forwarded", Event),
        /// A TCP packet that missed the connection table, whose previous
        /// Maglev table names another backend: sent to the current one with
        /// the previous one as a second hop (second chance).
        SecondChanceHop = ("second_chance_hop", Event),
        /// SYN-flood mode: a SYN forwarded by the ring alone, its flow not
        /// written to the connection table (this CPU is over
        /// `syn_flood_threshold` new flows in its current window).
        SynFloodUntabled = ("syn_flood_untabled", Event),
        /// SYN-flood mode: a CPU's window went over the threshold (once per
        /// window): each is at most one second of one CPU in flood mode.
        SynFloodWindows = ("syn_flood_windows", Event),
    }
}

counters! {
    /// Decap program counters.
    DecapStat {
        DecapV4 = ("decap_ipv4_outer", Pass),
        DecapV6 = ("decap_ipv6_outer", Pass),
        PassNotEncap = ("pass_not_encap", Pass),
        PassNotLocal = ("pass_not_local", Pass),
        PassFragment = ("pass_fragment", Pass),
        DropTruncated = ("drop_truncated", Drop),
        DropMalformed = ("drop_malformed", Drop),
        DropHeadroom = ("drop_headroom", Drop),
        // Second chance (a tunnel whose payload is itself a tunnel: the hop).
        /// This host has a socket for the flow (not a listener): delivered.
        ScDeliverSocket = ("sc_deliver_socket", Pass),
        /// A SYN (a new connection is this host's to take): delivered.
        ScDeliverSyn = ("sc_deliver_syn", Pass),
        /// No socket here: sent on to the second backend, hop cleared.
        ScForward = ("sc_forward", Tx),
        /// No socket here and no hop left (neither backend has the flow):
        /// delivered, so the kernel answers with a reset.
        ScNoFlow = ("sc_no_flow", Pass),
    }
}

/// Per-CPU packet and byte counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    /// Adds `other` into this counter (wrapping, as the data plane's do).
    pub fn add(&mut self, other: &Counter) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, two u64s: every bit pattern is valid.
unsafe impl aya::Pod for Counter {}

counters! {
    /// Counters of the health probes' TC egress program: one per packet.
    ProbeStat {
        ProbeEncapsulated = ("probe_encapsulated", Tx),
        PassNotProbe = ("pass_not_probe", Pass),
        DropNotReady = ("probe_drop_not_ready", Drop),
        DropFamilyMismatch = ("probe_drop_family_mismatch", Drop),
        DropMalformed = ("probe_drop_malformed", Drop),
        DropNoRoom = ("probe_drop_no_room", Drop),
    }
}
