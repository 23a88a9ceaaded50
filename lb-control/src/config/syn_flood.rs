//! `[syn_flood]`: the SYN-flood mode's threshold, new flows per CPU per
//! second above which SYNs are forwarded without a connection-table entry
//! (README, "SYN-flood mode"). Applies on reload.

use lb_common::DEFAULT_SYN_FLOOD_THRESHOLD;
use serde::Deserialize;
use toml::Spanned;

use super::problem::Checker;

/// `[syn_flood]`, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynFlood {
    /// New flows per CPU per second; 0 = the mode is off.
    pub threshold: u32,
}

/// Largest threshold accepted: no CPU inserts a hundred million flows a
/// second, so a larger figure is a typo (0 turns the mode off).
pub const MAX_SYN_FLOOD_THRESHOLD: u32 = 100_000_000;

impl Default for SynFlood {
    fn default() -> Self {
        Self { threshold: DEFAULT_SYN_FLOOD_THRESHOLD }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSynFlood {
    threshold: Option<Spanned<i64>>,
}

pub(super) fn validate_syn_flood(c: &mut Checker<'_>, raw: &RawSynFlood) -> Option<SynFlood> {
    let Some(t) = &raw.threshold else { return Some(SynFlood::default()) };
    match u32::try_from(*t.get_ref()) {
        Ok(threshold) if threshold <= MAX_SYN_FLOOD_THRESHOLD => Some(SynFlood { threshold }),
        _ => {
            c.add(
                &t.span(),
                "syn_flood.threshold",
                format!(
                    "{} is outside 0..={MAX_SYN_FLOOD_THRESHOLD} (new flows per CPU per second; 0 turns the mode off)",
                    t.get_ref()
                ),
            );
            None
        }
    }
}
