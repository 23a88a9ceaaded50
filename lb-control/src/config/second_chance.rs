//! `[second_chance]`: how long a VIP's previous Maglev table is kept, so a
//! flow that moves to another balancer while the backend set changes still
//! reaches the backend that has it (README, "Second chance").

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::problem::Checker;

/// `[second_chance]`, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecondChance {
    pub enabled: bool,
    /// How long a previous table is kept after its VIP changes.
    pub window: Duration,
}

pub const DEFAULT_SECOND_CHANCE_WINDOW: Duration = Duration::from_secs(600);
/// Longest window accepted (a day): a table kept longer mostly names
/// backends whose flows are long gone.
const MAX_WINDOW: Duration = Duration::from_secs(86_400);

impl Default for SecondChance {
    fn default() -> Self {
        Self { enabled: true, window: DEFAULT_SECOND_CHANCE_WINDOW }
    }
}

impl SecondChance {
    /// The window the engine keeps previous tables for; `None` when off.
    pub fn window(&self) -> Option<Duration> {
        self.enabled.then_some(self.window)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecondChance {
    enabled: Option<bool>,
    window: Option<Spanned<String>>,
}

pub(super) fn validate_second_chance(c: &mut Checker<'_>, raw: &RawSecondChance) -> Option<SecondChance> {
    let d = SecondChance::default();
    let window = match &raw.window {
        None => d.window,
        Some(w) => match humantime::parse_duration(w.get_ref()) {
            Ok(x) if x.is_zero() || x > MAX_WINDOW => {
                c.add(&w.span(), "second_chance.window", format!("'{}' is outside 1s..=24h", w.get_ref()));
                return None;
            }
            Ok(x) => x,
            Err(e) => {
                c.add(&w.span(), "second_chance.window", format!("'{}' is not a duration ({e})", w.get_ref()));
                return None;
            }
        },
    };
    Some(SecondChance { enabled: raw.enabled.unwrap_or(d.enabled), window })
}
