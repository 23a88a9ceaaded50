//! Part 4: Maglev table quality: how evenly the slots are shared, and how
//! much of the table moves when one backend leaves or joins.

use anyhow::Result;
use lb_control::maglev::{self, MaglevBackend};
use serde::Serialize;

use crate::{
    control::backends,
    progress::Progress,
    report::{f, Section, Table, Target},
};

const RING: u32 = 65_537;
pub const SIZES: &[u32] = &[10, 100, 1_000];

#[derive(Clone, Copy, Debug)]
pub struct Opts {
    /// Backends removed one at a time (evenly spread over the list; all of
    /// them when N is smaller).
    pub removals: usize,
    /// New backends added one at a time.
    pub additions: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct MoveStats {
    pub samples: usize,
    /// 1/N for a removal, 1/(N+1) for an addition.
    pub ideal_fraction: f64,
    /// Fraction of the table whose owner changed.
    pub moved_mean: f64,
    pub moved_max: f64,
    /// The same, less the slots of the backend removed (or added) itself:
    /// the disruption to other backends' flows.
    pub beyond_own_mean: f64,
    pub beyond_own_max: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct QualityRow {
    pub backends: u32,
    pub ring_size: u32,
    /// M / N.
    pub ideal_share: f64,
    pub largest_share: usize,
    pub smallest_share: usize,
    pub largest_rel: f64,
    pub smallest_rel: f64,
    pub remove: MoveStats,
    pub add: MoveStats,
}

#[derive(Clone, Debug, Serialize)]
pub struct QualityReport {
    pub rows: Vec<QualityRow>,
}

fn move_stats(ideal: f64, samples: &[(usize, usize)]) -> MoveStats {
    let m = RING as f64;
    let moved: Vec<f64> = samples.iter().map(|&(moved, _)| moved as f64 / m).collect();
    let beyond: Vec<f64> = samples.iter().map(|&(moved, own)| moved.saturating_sub(own) as f64 / m).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    MoveStats {
        samples: samples.len(),
        ideal_fraction: ideal,
        moved_mean: mean(&moved),
        moved_max: max(&moved),
        beyond_own_mean: mean(&beyond),
        beyond_own_max: max(&beyond),
    }
}

pub fn run(opts: &Opts, progress: &Progress) -> Result<QualityReport> {
    let mut rows = Vec::new();
    for &n in SIZES {
        progress.step(format!("Maglev quality: N = {n}"));
        let list = backends(n);
        let table = maglev::build(&list, RING)?;
        let shares = maglev::shares(&table);
        let counts: Vec<usize> = (1..=n).map(|id| shares.get(&id).copied().unwrap_or(0)).collect();
        let ideal = RING as f64 / n as f64;
        let largest = counts.iter().copied().max().unwrap_or(0);
        let smallest = counts.iter().copied().min().unwrap_or(0);

        let k = opts.removals.min(n as usize);
        let mut removed = Vec::new();
        for s in 0..k {
            let victim = s * n as usize / k;
            let rest: Vec<MaglevBackend> =
                list.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, b)| b.clone()).collect();
            let after = maglev::build(&rest, RING)?;
            removed.push((maglev::moved_slots(&table, &after), counts[victim]));
        }
        let mut added = Vec::new();
        for s in 0..opts.additions {
            let id = n + 1;
            // Addresses outside the list's 10.1.0.0/16.
            let key = std::net::Ipv4Addr::from(0x0a02_0000 + s as u32 + 1).octets().to_vec();
            let mut more = list.clone();
            more.push(MaglevBackend::new(id, key, 1));
            let after = maglev::build(&more, RING)?;
            let own = maglev::shares(&after).get(&id).copied().unwrap_or(0);
            added.push((maglev::moved_slots(&table, &after), own));
        }
        rows.push(QualityRow {
            backends: n,
            ring_size: RING,
            ideal_share: ideal,
            largest_share: largest,
            smallest_share: smallest,
            largest_rel: largest as f64 / ideal,
            smallest_rel: smallest as f64 / ideal,
            remove: move_stats(1.0 / n as f64, &removed),
            add: move_stats(1.0 / (n + 1) as f64, &added),
        });
    }
    Ok(QualityReport { rows })
}

fn pct(x: f64) -> String {
    format!("{}%", f(x * 100.0, 3))
}

impl Section for QualityReport {
    const TITLE: &'static str = "4. Maglev quality";

    fn lines(&self) -> Vec<String> {
        let mut out = vec![self.describe()];
        out.extend(self.table().text());
        out
    }

    fn markdown(&self) -> String {
        format!("{}\n\n{}", self.describe(), self.table().markdown())
    }
}

impl QualityReport {
    fn describe(&self) -> String {
        format!(
            "lb_control::maglev::build with N equal-weight IPv4 backends, M = {RING}. Share = slots a backend owns, \
             relative to the ideal M/N. Moved = slots whose owner changed when one backend is removed (or a new one added), \
             as a fraction of M, against the ideal 1/N (1/(N+1)); beyond own = moved less the removed (added) backend's own slots. \
             Mean and worst over {} removals (every backend in turn where N is smaller, else spread over the list) \
             and {} additions per N.",
            self.rows.iter().map(|r| r.remove.samples).max().unwrap_or(0),
            self.rows.iter().map(|r| r.add.samples).max().unwrap_or(0),
        )
    }

    fn table(&self) -> Table {
        let mut t = Table::new(
            &[
                "N",
                "ideal M/N",
                "largest",
                "smallest",
                "remove: moved (ideal 1/N)",
                "beyond own mean / max",
                "add: moved (ideal 1/(N+1))",
                "beyond own mean / max",
            ],
            0,
        );
        for r in &self.rows {
            t.row(vec![
                r.backends.to_string(),
                f(r.ideal_share, 1),
                format!("{} ({}x)", r.largest_share, f(r.largest_rel, 4)),
                format!("{} ({}x)", r.smallest_share, f(r.smallest_rel, 4)),
                format!("{} ({})", pct(r.remove.moved_mean), pct(r.remove.ideal_fraction)),
                format!("{} / {}", pct(r.remove.beyond_own_mean), pct(r.remove.beyond_own_max)),
                format!("{} ({})", pct(r.add.moved_mean), pct(r.add.ideal_fraction)),
                format!("{} / {}", pct(r.add.beyond_own_mean), pct(r.add.beyond_own_max)),
            ]);
        }
        t
    }

    pub fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        for r in &self.rows {
            t.push(Target {
                part: "maglev",
                name: format!("Maglev largest share, N = {}", r.backends),
                target: "<= 1.01 x ideal".into(),
                value: format!("{} x", f(r.largest_rel, 4)),
                met: r.largest_rel <= 1.01,
            });
        }
        for r in &self.rows {
            t.push(Target {
                part: "maglev",
                name: format!(
                    "Maglev removal, moved beyond own slots, N = {} (worst of {})",
                    r.backends, r.remove.samples
                ),
                target: "<= 0.6% of table".into(),
                value: pct(r.remove.beyond_own_max),
                met: r.remove.beyond_own_max <= 0.006,
            });
        }
        t
    }
}
