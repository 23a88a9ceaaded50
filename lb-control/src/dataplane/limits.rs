//! The sizes fixed when the balancer is loaded, and what follows from them.

use lb_common::{
    DEFAULT_CONN_TABLE_SIZE, DEFAULT_MAX_REALS, DEFAULT_MAX_VIPS, DEFAULT_RING_SIZE, MAX_RING_SIZE, PREVIOUS_RINGS,
    RING_SPARES,
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
    /// Number of rings in the pool: one per VIP, the spares new tables are
    /// written into before they are switched to, and the rings that keep
    /// previous tables for second chance.
    pub fn ring_count(&self) -> u32 {
        // Saturating: `validate` refuses limits whose ring pool overflows.
        self.max_vips.saturating_add(RING_SPARES + PREVIOUS_RINGS)
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
        self.max_vips.saturating_mul(2).checked_next_power_of_two().unwrap_or(1 << 31).max(16)
    }

    /// Entries of the `VIP_TABLE` array: two copies of the table.
    pub fn vip_table_entries(&self) -> u32 {
        2 * self.vip_buckets()
    }

    /// Backend slots in the whole pool (saturating; see `validate`).
    pub fn ring_slots(&self) -> u32 {
        self.ring_count().saturating_mul(self.ring_size)
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
        // Checked in u64: max_vips near u32::MAX overflows the ring count.
        let ring_count = self.max_vips as u64 + RING_SPARES as u64 + PREVIOUS_RINGS as u64;
        if ring_count * self.ring_size as u64 > u32::MAX as u64 {
            return bad(format!(
                "max_vips {} needs {ring_count} rings of {} entries: more than one BPF array holds",
                self.max_vips, self.ring_size
            ));
        }
        if self.max_vips as u64 * 2 > 1 << 30 {
            return bad(format!(
                "max_vips {} is above {} (the VIP table's two copies of buckets)",
                self.max_vips,
                1u32 << 29
            ));
        }
        Ok(())
    }
}
