//! The reconciler: turns the operator's [`VipSet`] into map contents, and
//! changes the data plane from one set to the next without a packet seeing
//! a half-applied state.
//!
//! Order of every apply: validate everything first (a rejected change
//! touches no map); add backends; write each changed VIP's new Maglev table
//! into a free ring and switch the VIP to it with one map update; remove
//! VIPs; release backends nothing references any more.
//!
//! Each (VIP, backend) pair has a real of its own (see [`lb_common::Real`]):
//! a connection-table entry names the real, so it is valid exactly as long
//! as that backend serves that VIP. Removing a backend from one VIP clears
//! that pair's real and the VIP's flows on it re-hash, whatever other VIPs
//! use the same address. A freed real is given to a new pair only after
//! the entries naming it are swept from the connection table, so no stale
//! entry sends a flow to the new pair's backend.
//!
//! Second chance: with a window set, the ring a VIP leaves when its table
//! changes is kept as the VIP's previous ring (`PREV_RINGS`) until the
//! window passes ([`Engine::expire_previous`]) or the VIP changes again;
//! rings for previous tables come from the pool's `PREVIOUS_RINGS`, and
//! when none is free the oldest previous table is let go early.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_common::{
    addr_to_ip, echo_marker_key, ip_to_addr, Counter, LbConfig, Real, VipKey, VipMeta, CFG_F_HAS_PORT0_VIPS,
    CFG_F_READY, IPPROTO_ICMP, IPPROTO_ICMPV6, VIP_F_ICMP_ECHO,
};

use crate::{
    dataplane::{Balancer, DataplaneError},
    maglev::{self, MaglevBackend, MaglevError},
    model::{check_backend_family, check_weight, VipId, VipSet, VipSpec},
};

#[derive(thiserror::Error, Debug)]
pub enum EngineError {
    /// The requested state cannot be represented; nothing was changed.
    #[error("{0}")]
    Rejected(String),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("building the Maglev table of {vip}: {source}")]
    Maglev {
        vip: VipId,
        #[source]
        source: MaglevError,
    },
}

/// What an apply changed, for logs and API answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplyReport {
    pub vips_added: usize,
    pub vips_removed: usize,
    /// VIPs whose Maglev table was rewritten.
    pub tables_written: usize,
    /// VIPs whose flags alone changed.
    pub flags_changed: usize,
    /// (VIP, backend) pairs given a real.
    pub backends_added: usize,
    /// (VIP, backend) pairs whose real was cleared (their flows re-hash).
    pub backends_removed: usize,
}

impl ApplyReport {
    pub fn is_empty(&self) -> bool {
        *self == ApplyReport::default()
    }
}

/// Free indices of one kind (backend slots, VIP numbers, rings). The
/// oldest freed is taken first, so a freed index is reused as late as
/// possible.
#[derive(Debug)]
struct SlotPool {
    free: VecDeque<u32>,
    /// What an index is, and the limit that sizes the pool, for errors.
    what: &'static str,
    limit: &'static str,
}

impl SlotPool {
    fn new(what: &'static str, limit: &'static str, free: impl IntoIterator<Item = u32>) -> Self {
        Self { free: free.into_iter().collect(), what, limit }
    }

    fn take(&mut self) -> Result<u32, EngineError> {
        self.free.pop_front().ok_or_else(|| EngineError::Rejected(format!("no free {} ({})", self.what, self.limit)))
    }

    /// Gives back an index just taken, when what it was for failed: it is
    /// the next one taken again.
    fn untake(&mut self, index: u32) {
        self.free.push_front(index);
    }

    /// Frees an index: it is taken after every index already free.
    fn release(&mut self, index: u32) {
        self.free.push_back(index);
    }
}

#[derive(Clone, Debug)]
struct Installed {
    /// `None` when adopted from pinned maps and not yet reconciled.
    spec: Option<VipSpec>,
    vip_num: u32,
    ring: u32,
}

/// A VIP's previous Maglev table, kept for second chance.
#[derive(Clone, Copy, Debug)]
struct Previous {
    ring: u32,
    since: Instant,
}

/// Owns the balancer's maps and knows what is in them.
pub struct Engine {
    /// How long a VIP's previous table is kept (second chance); `None`:
    /// not kept.
    second_chance: Option<Duration>,
    /// The previous table of each VIP that has one.
    previous: BTreeMap<VipId, Previous>,
    bal: Balancer,
    installed: BTreeMap<VipId, Installed>,
    /// The real of each (VIP, backend) pair.
    reals: BTreeMap<(VipId, IpAddr), u32>,
    /// Reals found in pinned maps whose VIP is not installed: freed by the
    /// next apply.
    orphans: Vec<u32>,
    /// Counts of the reals a backend had for VIPs it no longer serves, while
    /// it still serves others: its counters never go backwards.
    retired: BTreeMap<IpAddr, Counter>,
    free_reals: SlotPool,
    free_vip_nums: SlotPool,
    /// The pool has two rings more than VIPs, so one is always free.
    free_rings: SlotPool,
    /// Addresses that have an ICMP echo marker.
    echo_markers: BTreeMap<IpAddr, u32>,
}

fn marker_key(addr: IpAddr) -> VipKey {
    let (a, family) = ip_to_addr(addr);
    echo_marker_key(family, a)
}

pub fn vip_key(id: &VipId) -> VipKey {
    let (addr, family) = ip_to_addr(id.addr);
    VipKey { addr, port: id.port.to_be(), proto: id.proto.number(), family }
}

fn key_to_vip_id(key: &VipKey) -> Option<VipId> {
    let addr = addr_to_ip(&key.addr, key.family)?;
    let proto = match key.proto {
        lb_common::IPPROTO_TCP => crate::model::Proto::Tcp,
        lb_common::IPPROTO_UDP => crate::model::Proto::Udp,
        _ => return None,
    };
    Some(VipId { addr, port: u16::from_be(key.port), proto })
}

impl Engine {
    /// Takes over a balancer. Whatever its maps already hold (a restarted
    /// daemon adopting pinned maps) is read back, so an apply of the same
    /// state rewrites nothing.
    pub fn adopt(bal: Balancer) -> Result<Self, EngineError> {
        let limits = *bal.limits();
        let mut installed = BTreeMap::new();
        let mut echo_markers = BTreeMap::new();
        let mut used_nums = BTreeSet::new();
        let mut used_rings = BTreeSet::new();
        let mut previous = BTreeMap::new();
        let now = Instant::now();
        for (key, meta) in bal.vips()? {
            if key.proto == IPPROTO_ICMP || key.proto == IPPROTO_ICMPV6 {
                if let Some(addr) = addr_to_ip(&key.addr, key.family) {
                    echo_markers.insert(addr, meta.vip_num);
                }
                continue;
            }
            let Some(id) = key_to_vip_id(&key) else { continue };
            used_nums.insert(meta.vip_num);
            used_rings.insert(meta.ring);
            installed.insert(id, Installed { spec: None, vip_num: meta.vip_num, ring: meta.ring });
            // A previous table kept by the last daemon: its window starts
            // again (the old start was not persisted).
            if let Some(ring) = bal.prev_ring(meta.vip_num)?.filter(|r| *r < limits.ring_count() && *r != meta.ring) {
                if used_rings.insert(ring) {
                    previous.insert(id, Previous { ring, since: now });
                }
            }
        }
        let mut reals = BTreeMap::new();
        let mut orphans = Vec::new();
        let mut free_reals = Vec::new();
        for index in 1..limits.max_reals {
            let Some(addr) = bal.real(index)?.ip() else {
                free_reals.push(index);
                continue;
            };
            match key_to_vip_id(&bal.real_owner(index)?).filter(|id| installed.contains_key(id)) {
                Some(id) if !reals.contains_key(&(id, addr)) => {
                    reals.insert((id, addr), index);
                }
                _ => orphans.push(index),
            }
        }
        let free_reals = SlotPool::new("backend slot", "limits.max_backends", free_reals);
        let free_vip_nums =
            SlotPool::new("VIP number", "limits.max_vips", (0..limits.max_vips).filter(|n| !used_nums.contains(n)));
        let free_rings = SlotPool::new(
            "Maglev ring",
            "limits.max_vips",
            (0..limits.ring_count()).filter(|r| !used_rings.contains(r)),
        );
        Ok(Self {
            second_chance: None,
            previous,
            free_vip_nums,
            free_rings,
            bal,
            installed,
            reals,
            orphans,
            retired: BTreeMap::new(),
            free_reals,
            echo_markers,
        })
    }

    pub fn balancer(&self) -> &Balancer {
        &self.bal
    }

    pub fn balancer_mut(&mut self) -> &mut Balancer {
        &mut self.bal
    }

    /// The counter index of each installed VIP.
    pub fn vip_num(&self, id: &VipId) -> Option<u32> {
        self.installed.get(id).map(|i| i.vip_num)
    }

    /// The real (backend index) of a backend of a VIP.
    pub fn real_index(&self, vip: &VipId, addr: &IpAddr) -> Option<u32> {
        self.reals.get(&(*vip, *addr)).copied()
    }

    /// Sets how long previous tables are kept (second chance); `None`
    /// turns it off and lets every previous table go at once. A shorter
    /// window applies to the tables already kept.
    pub fn set_second_chance(&mut self, window: Option<Duration>) -> Result<(), EngineError> {
        self.second_chance = window;
        self.expire_previous(Instant::now()).map(|_| ())
    }

    /// Lets go of previous tables older than the window (all of them when
    /// second chance is off). Returns how many went.
    pub fn expire_previous(&mut self, now: Instant) -> Result<usize, EngineError> {
        let expired: Vec<VipId> = self
            .previous
            .iter()
            .filter(|(_, p)| self.second_chance.is_none_or(|w| now.saturating_duration_since(p.since) >= w))
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.drop_previous(id)?;
        }
        Ok(expired.len())
    }

    /// The ring holding a VIP's previous table, if one is kept.
    pub fn previous_ring(&self, id: &VipId) -> Option<u32> {
        self.previous.get(id).map(|p| p.ring)
    }

    /// Clears a VIP's previous table in the data plane, then frees its ring.
    fn drop_previous(&mut self, id: &VipId) -> Result<(), EngineError> {
        let Some(prev) = self.previous.get(id).copied() else { return Ok(()) };
        if let Some(vip_num) = self.installed.get(id).map(|i| i.vip_num) {
            self.bal.set_prev_ring(vip_num, None)?;
        }
        self.previous.remove(id);
        self.free_rings.release(prev.ring);
        Ok(())
    }

    /// A free ring for a new table; when there is none, the oldest previous
    /// table is let go early to make one.
    fn take_ring(&mut self) -> Result<u32, EngineError> {
        match self.free_rings.take() {
            Ok(ring) => Ok(ring),
            Err(e) => {
                let Some(oldest) = self.previous.iter().min_by_key(|(_, p)| p.since).map(|(id, _)| *id) else {
                    return Err(e);
                };
                tracing::warn!(vip = %oldest, "no free ring: a previous table (second chance) is let go early");
                self.drop_previous(&oldest)?;
                self.free_rings.take()
            }
        }
    }

    /// Writes the forwarding config and marks the data plane ready.
    pub fn set_forwarding(&mut self, mut cfg: LbConfig) -> Result<(), EngineError> {
        cfg.flags |= CFG_F_READY;
        if self.installed.keys().any(|id| id.port == 0) {
            cfg.flags |= CFG_F_HAS_PORT0_VIPS;
        } else {
            cfg.flags &= !CFG_F_HAS_PORT0_VIPS;
        }
        self.bal.set_config(&cfg)?;
        Ok(())
    }

    /// Checks that `desired` fits the limits and the data plane's rules.
    pub fn check(&self, desired: &VipSet) -> Result<(), EngineError> {
        let limits = self.bal.limits();
        let reject = |m: String| Err(EngineError::Rejected(m));
        if desired.len() > limits.max_vips as usize {
            return reject(format!("{} VIPs exceed the limit of {}", desired.len(), limits.max_vips));
        }
        let mut pairs = 0usize;
        for (id, spec) in desired {
            for (addr, b) in &spec.backends {
                check_backend_family(id, *addr).map_err(EngineError::Rejected)?;
                check_weight(b.weight).map_err(EngineError::Rejected)?;
                pairs += 1;
            }
            if spec.backends.len() > limits.ring_size as usize {
                return reject(format!(
                    "VIP {id}: {} backends do not fit a ring of {}",
                    spec.backends.len(),
                    limits.ring_size
                ));
            }
        }
        if pairs >= limits.max_reals as usize {
            return reject(format!(
                "{pairs} VIP backends exceed limits.max_backends = {} (a backend counts once per VIP it serves)",
                limits.max_reals - 1
            ));
        }
        Ok(())
    }

    fn table(&self, id: &VipId, spec: &VipSpec) -> Result<Vec<u32>, EngineError> {
        let backends: Vec<MaglevBackend> = spec
            .backends
            .iter()
            .map(|(addr, b)| MaglevBackend {
                id: self.reals[&(*id, *addr)],
                key: match addr {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                },
                weight: b.weight,
            })
            .collect();
        maglev::build(&backends, self.bal.limits().ring_size).map_err(|source| EngineError::Maglev { vip: *id, source })
    }

    /// Makes the data plane serve exactly `desired`. The VIP table is
    /// published once, at the end, whatever happened in between.
    pub fn apply(&mut self, desired: &VipSet, forwarding: &LbConfig) -> Result<ApplyReport, EngineError> {
        self.check(desired)?;
        self.bal.defer_vip_publishing(true)?;
        let result = self.apply_batch(desired, forwarding);
        let published = self.bal.defer_vip_publishing(false);
        let report = result?;
        published?;
        Ok(report)
    }

    /// One apply's changes, in the order that keeps every packet on a
    /// consistent state: backends first, then VIP tables, then removals.
    fn apply_batch(&mut self, desired: &VipSet, forwarding: &LbConfig) -> Result<ApplyReport, EngineError> {
        let mut report = ApplyReport::default();
        let wanted: BTreeSet<(VipId, IpAddr)> =
            desired.iter().flat_map(|(id, s)| s.backends.keys().map(|a| (*id, *a))).collect();
        self.ensure_backends(&wanted, &mut report)?;
        self.install_vips(desired, &mut report)?;
        self.remove_vips(desired, &mut report)?;
        self.sync_echo_markers()?;
        self.release_backends(&wanted, &mut report)?;
        self.bal.rebuild_vip_filter()?;
        self.set_forwarding(*forwarding)?;
        Ok(report)
    }

    /// Gives every (VIP, backend) pair a desired VIP needs a real. The
    /// reals taken are swept from the connection table first (one scan for
    /// all), then named, owned and counted from zero.
    fn ensure_backends(
        &mut self,
        wanted: &BTreeSet<(VipId, IpAddr)>,
        report: &mut ApplyReport,
    ) -> Result<(), EngineError> {
        let missing: Vec<(VipId, IpAddr)> = wanted.iter().filter(|p| !self.reals.contains_key(p)).copied().collect();
        let mut taken = Vec::with_capacity(missing.len());
        for _ in &missing {
            match self.free_reals.take() {
                Ok(index) => taken.push(index),
                Err(e) => {
                    taken.iter().rev().for_each(|&i| self.free_reals.untake(i));
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.bal.forget_conns_of(&taken) {
            taken.iter().rev().for_each(|&i| self.free_reals.untake(i));
            return Err(e.into());
        }
        for (n, (&(id, addr), &index)) in missing.iter().zip(&taken).enumerate() {
            // A new pair starts with zero counters, whoever had the real.
            let written = self
                .bal
                .reset_real_stats(index)
                .and_then(|()| self.bal.set_real_owner(index, &vip_key(&id)))
                .and_then(|()| self.bal.set_real(index, &Real::from(addr)));
            if let Err(e) = written {
                taken[n..].iter().rev().for_each(|&i| self.free_reals.untake(i));
                return Err(e.into());
            }
            self.reals.insert((id, addr), index);
            report.backends_added += 1;
        }
        Ok(())
    }

    /// New and changed VIPs: each new Maglev table goes into a free ring,
    /// then one VIP update switches to it.
    fn install_vips(&mut self, desired: &VipSet, report: &mut ApplyReport) -> Result<(), EngineError> {
        for (id, spec) in desired {
            let current = self.installed.get(id).cloned();
            if current.as_ref().and_then(|c| c.spec.as_ref()) == Some(spec) {
                continue;
            }
            let table = self.table(id, spec)?;
            let flags = spec.flag_bits();
            let key = vip_key(id);
            match current {
                Some(cur) => {
                    let same_table = self.bal.ring_equals(cur.ring, &table)?;
                    let same_flags = self.bal.vip(&key).map(|m| m.flags) == Some(flags);
                    if same_table {
                        if !same_flags {
                            self.bal.set_vip(&key, &VipMeta { flags, vip_num: cur.vip_num, ring: cur.ring })?;
                            report.flags_changed += 1;
                        }
                    } else {
                        let ring = self.take_ring()?;
                        if let Err(e) = self.bal.write_ring(ring, &table) {
                            self.free_rings.untake(ring);
                            return Err(e.into());
                        }
                        self.bal.set_vip(&key, &VipMeta { flags, vip_num: cur.vip_num, ring })?;
                        self.installed.get_mut(id).expect("present").ring = ring;
                        // One previous table per VIP: the one just left.
                        self.drop_previous(id)?;
                        if self.second_chance.is_some() {
                            self.bal.set_prev_ring(cur.vip_num, Some(cur.ring))?;
                            self.previous.insert(*id, Previous { ring: cur.ring, since: Instant::now() });
                        } else {
                            self.free_rings.release(cur.ring);
                        }
                        report.tables_written += 1;
                    }
                    self.installed.get_mut(id).expect("present").spec = Some(spec.clone());
                }
                None => {
                    let vip_num = self.free_vip_nums.take()?;
                    let ring = match self.take_ring() {
                        Ok(ring) => ring,
                        Err(e) => {
                            self.free_vip_nums.untake(vip_num);
                            return Err(e);
                        }
                    };
                    let written = self
                        .bal
                        .write_ring(ring, &table)
                        .and_then(|()| self.bal.reset_vip_stats(vip_num))
                        .and_then(|()| self.bal.set_prev_ring(vip_num, None))
                        .and_then(|()| self.bal.set_vip(&key, &VipMeta { flags, vip_num, ring }));
                    if let Err(e) = written {
                        self.free_rings.untake(ring);
                        self.free_vip_nums.untake(vip_num);
                        return Err(e.into());
                    }
                    self.installed.insert(*id, Installed { spec: Some(spec.clone()), vip_num, ring });
                    report.vips_added += 1;
                    report.tables_written += 1;
                }
            }
        }
        Ok(())
    }

    /// VIPs no longer wanted: gone from the VIP table, their number and
    /// ring free.
    fn remove_vips(&mut self, desired: &VipSet, report: &mut ApplyReport) -> Result<(), EngineError> {
        let gone: Vec<VipId> = self.installed.keys().filter(|id| !desired.contains_key(id)).copied().collect();
        for id in gone {
            self.drop_previous(&id)?;
            self.bal.remove_vip(&vip_key(&id))?;
            let old = self.installed.remove(&id).expect("present");
            self.free_vip_nums.release(old.vip_num);
            self.free_rings.release(old.ring);
            report.vips_removed += 1;
        }
        Ok(())
    }

    /// One ICMP echo marker per VIP address, none for other addresses.
    fn sync_echo_markers(&mut self) -> Result<(), EngineError> {
        let addrs: BTreeMap<IpAddr, u32> = self.installed.iter().fold(BTreeMap::new(), |mut m, (id, i)| {
            m.entry(id.addr).or_insert(i.vip_num);
            m
        });
        for (addr, vip_num) in &addrs {
            if self.echo_markers.get(addr) != Some(vip_num) {
                self.bal
                    .set_vip(&marker_key(*addr), &VipMeta { flags: VIP_F_ICMP_ECHO, vip_num: *vip_num, ring: 0 })?;
                self.echo_markers.insert(*addr, *vip_num);
            }
        }
        let stale: Vec<IpAddr> = self.echo_markers.keys().filter(|a| !addrs.contains_key(a)).copied().collect();
        for addr in stale {
            self.bal.remove_vip(&marker_key(addr))?;
            self.echo_markers.remove(&addr);
        }
        Ok(())
    }

    /// Pairs no desired VIP has (a backend removed from a VIP, a VIP
    /// removed) and orphaned reals: cleared, so their flows re-hash, and
    /// freed.
    fn release_backends(
        &mut self,
        wanted: &BTreeSet<(VipId, IpAddr)>,
        report: &mut ApplyReport,
    ) -> Result<(), EngineError> {
        let unused: Vec<((VipId, IpAddr), u32)> =
            self.reals.iter().filter(|(p, _)| !wanted.contains(p)).map(|(p, i)| (*p, *i)).collect();
        for ((id, addr), index) in unused {
            // Read before the real is cleared: what it counted stays in its
            // backend's totals while the backend serves other VIPs.
            let last = self.bal.real_stat(index)?;
            self.bal.clear_real(index)?;
            self.reals.remove(&(id, addr));
            self.free_reals.release(index);
            self.retired.entry(addr).or_default().add(&last);
            report.backends_removed += 1;
        }
        for index in std::mem::take(&mut self.orphans) {
            self.bal.clear_real(index)?;
            self.free_reals.release(index);
        }
        let serving: BTreeSet<IpAddr> = self.reals.keys().map(|(_, a)| *a).collect();
        self.retired.retain(|addr, _| serving.contains(addr));
        Ok(())
    }

    /// Every backend address in use, once.
    pub fn backends(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.reals.keys().map(|(_, a)| *a).collect::<BTreeSet<_>>().into_iter()
    }

    /// Each backend's counters: the sum over its reals (one per VIP it
    /// serves), and over those it had for VIPs it no longer serves.
    pub fn backend_counters(&self) -> Result<BTreeMap<IpAddr, Counter>, EngineError> {
        let mut out = self.retired.clone();
        for (&(_, addr), &index) in &self.reals {
            out.entry(addr).or_default().add(&self.bal.real_stat(index)?);
        }
        Ok(out)
    }

    /// Every (VIP, backend) pair with its real.
    pub fn reals(&self) -> impl Iterator<Item = (&VipId, IpAddr, u32)> + '_ {
        self.reals.iter().map(|((id, addr), &index)| (id, *addr, index))
    }

    pub fn installed_vips(&self) -> impl Iterator<Item = (&VipId, u32)> {
        self.installed.iter().map(|(id, i)| (id, i.vip_num))
    }
}
