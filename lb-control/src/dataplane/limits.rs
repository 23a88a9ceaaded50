//! The sizes fixed when the balancer is loaded, and what follows from them.

use lb_common::{
    DEFAULT_CONN_TABLE_SIZE, DEFAULT_MAX_REALS, DEFAULT_MAX_VIPS, DEFAULT_RING_SIZE, MAX_RING_SIZE, RING_SPARES,
};

use super::DataplaneError;

/// Sizes fixed when the balancer is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Entries per Maglev ring (a prime).
    pub ring_size: u32,
    pub max_vips: u32,
    /// Backend slots, index 0 included (it is never used).
    pub max_reals: u32,
    pub conn_table_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            ring_size: DEFAULT_RING_SIZE,
            max_vips: DEFAULT_MAX_VIPS,
            max_reals: DEFAULT_MAX_REALS,
            conn_table_size: DEFAULT_CONN_TABLE_SIZE,
        }
    }
}

impl Limits {
    /// Number of rings in the pool: one per VIP plus the spares new tables
    /// are written into before they are switched to.
    pub fn ring_count(&self) -> u32 {
        self.max_vips + RING_SPARES
    }

    /// Sets of the connection table (its size rounded down to a power of
    /// two of sets).
    pub fn conn_sets(&self) -> u32 {
        lb_common::conn_sets(self.conn_table_size)
    }

    /// Slots of the connection table.
    pub fn conn_slots(&self) -> u32 {
        self.conn_sets() * lb_common::CONN_WAYS
    }

    /// Buckets of each VIP table copy: one per VIP-table entry (VIPs and
    /// echo markers) on average, a power of two.
    pub fn vip_buckets(&self) -> u32 {
        (self.max_vips * 2).next_power_of_two().max(16)
    }

    /// Backend slots in the whole pool.
    pub fn ring_slots(&self) -> u32 {
        self.ring_count() * self.ring_size
    }

    pub fn validate(&self) -> Result<(), DataplaneError> {
        let bad = |msg: String| Err(DataplaneError::Limits(msg));
        if self.ring_size < 2 || self.ring_size > MAX_RING_SIZE {
            return bad(format!("ring_size {} is outside 2..={MAX_RING_SIZE}", self.ring_size));
        }
        if self.max_reals > lb_common::MAX_REALS_LIMIT {
            return bad(format!(
                "max_reals {} is above {} (backend indices are 16 bits in the connection table)",
                self.max_reals,
                lb_common::MAX_REALS_LIMIT
            ));
        }
        if self.max_vips == 0 || self.max_reals < 2 || self.conn_table_size == 0 {
            return bad(format!(
                "max_vips ({}), max_reals ({}) and conn_table_size ({}) must be positive \
                 (max_reals counts the reserved index 0)",
                self.max_vips, self.max_reals, self.conn_table_size
            ));
        }
        if (self.ring_count() as u64) * (self.ring_size as u64) > u32::MAX as u64 {
            return bad(format!(
                "{} rings of {} entries do not fit one BPF array",
                self.ring_count(),
                self.ring_size
            ));
        }
        Ok(())
    }
}
