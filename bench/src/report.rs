//! The run's report: tables printed on stdout and written as markdown, the
//! JSON document, the targets with MET / NOT MET.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{control, dataplane::MixResult, quality, scaling, sys, trafgen};

/// A table rendered both as aligned text (stdout) and as markdown.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Columns aligned left (the rest are right-aligned).
    left: usize,
}

impl Table {
    /// `left`: how many leading columns are text (left-aligned).
    pub fn new(headers: &[&str], left: usize) -> Self {
        Self { headers: headers.iter().map(|s| s.to_string()).collect(), rows: Vec::new(), left }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn text(&self) -> Vec<String> {
        let n = self.headers.len();
        let mut width = vec![0usize; n];
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |r: &Vec<String>| {
            let mut s = String::new();
            for (i, c) in r.iter().enumerate().take(n) {
                if i > 0 {
                    s.push_str("  ");
                }
                if i < self.left {
                    s.push_str(&format!("{c:<w$}", w = width[i]));
                } else {
                    s.push_str(&format!("{c:>w$}", w = width[i]));
                }
            }
            s.trim_end().to_string()
        };
        std::iter::once(line(&self.headers)).chain(self.rows.iter().map(line)).collect()
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("| {} |\n|", self.headers.join(" | "));
        for i in 0..self.headers.len() {
            s.push_str(if i < self.left { " --- |" } else { " ---: |" });
        }
        s.push('\n');
        for r in &self.rows {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        s
    }
}

/// One figure against its target.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub part: &'static str,
    pub name: String,
    pub target: String,
    pub value: String,
    pub met: bool,
}

impl Target {
    pub fn verdict(&self) -> &'static str {
        if self.met {
            "MET"
        } else {
            "NOT MET"
        }
    }
}

pub fn targets_table(targets: &[Target]) -> Table {
    let mut t = Table::new(&["target", "required", "measured", "verdict"], 4);
    for x in targets {
        t.row(vec![x.name.clone(), x.target.clone(), x.value.clone(), x.verdict().into()]);
    }
    t
}

/// A data-plane mix's figures (one row of part 1, or of the scaling part).
#[derive(Clone, Debug, Serialize)]
pub struct MixRow {
    pub name: String,
    /// Median over rounds of the mean ns per packet, and the rounds' range.
    pub ns: f64,
    pub ns_min: f64,
    pub ns_max: f64,
    pub mpps: f64,
    /// The XDP_TX-only floor, timed in the same rounds.
    pub floor_ns: f64,
    pub floor_mpps: f64,
    /// Median over rounds of balancer / floor, and the rounds' range.
    pub ratio: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
    pub path_verified: bool,
}

impl From<&MixResult> for MixRow {
    fn from(r: &MixResult) -> Self {
        MixRow {
            name: r.name.to_string(),
            ns: r.ns,
            ns_min: r.ns_min,
            ns_max: r.ns_max,
            mpps: r.mpps(),
            floor_ns: r.floor_ns,
            floor_mpps: 1_000.0 / r.floor_ns,
            ratio: r.ratio,
            ratio_min: r.ratio_min,
            ratio_max: r.ratio_max,
            path_verified: r.path_verified,
        }
    }
}

impl MixRow {
    pub fn path(&self) -> &'static str {
        if self.path_verified {
            "verified"
        } else {
            "WRONG PATH"
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PartError {
    pub part: &'static str,
    pub error: String,
}

/// Everything one `lb-bench all` run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub command: String,
    pub quick: bool,
    pub duration_s: f64,
    pub host: sys::Host,
    pub dataplane: Option<crate::DataplaneReport>,
    pub scaling: Option<scaling::ScalingReport>,
    pub control: Option<control::ControlReport>,
    pub maglev_quality: Option<quality::QualityReport>,
    pub trafgen: Option<trafgen::TrafgenReport>,
    pub targets: Vec<Target>,
    pub errors: Vec<PartError>,
}

impl Report {
    pub fn markdown(&self, svg_name: Option<&str>) -> String {
        let mut md = format!("# lb-bench results, {}\n\n", self.date);
        md += &format!(
            "`{}` ({} run, {:.0} s) on Linux {}, {} CPUs ({}), {} GiB.\n\n",
            self.command,
            if self.quick { "quick" } else { "full" },
            self.duration_s,
            self.host.kernel,
            self.host.cpus_online,
            self.host.cpu_model,
            self.host.memory_gib
        );
        md += "## Targets\n\n";
        md += &targets_table(&self.targets).markdown();
        if !self.errors.is_empty() {
            md += "\n**Parts that failed:**\n\n";
            for e in &self.errors {
                md += &format!("- {}: `{}`\n", e.part, e.error.replace('\n', " "));
            }
        }
        if let Some(d) = &self.dataplane {
            md += "\n## 1. Data plane: per-packet cost per traffic mix\n\n";
            md += &d.describe();
            md += "\n\n";
            md += &d.table().markdown();
            if let Some(svg) = svg_name {
                md += &format!("\n![Mpps per traffic mix, balancer next to the XDP_TX floor]({svg})\n");
            }
        }
        if let Some(s) = &self.scaling {
            md += "\n## 2. Data plane scaling\n\n";
            md += &s.describe();
            md += "\n\n";
            md += &s.table().markdown();
        }
        if let Some(c) = &self.control {
            md += "\n## 3. Control plane\n\n";
            md += &c.markdown();
        }
        if let Some(q) = &self.maglev_quality {
            md += "\n## 4. Maglev quality\n\n";
            md += &q.describe();
            md += "\n\n";
            md += &q.table().markdown();
        }
        if let Some(t) = &self.trafgen {
            md += "\n## 5. End to end with trafgen (veth lab)\n\n";
            md += &t.markdown();
        }
        md += "\nSee `bench/README.md` for what each figure means and how it is measured.\n";
        md
    }

    /// Writes `<date>.json`, `<date>.md` and `<date>.svg` into `dir`; returns
    /// the paths written.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut written = Vec::new();
        let svg_name = format!("{}.svg", self.date);
        let svg = match &self.dataplane {
            Some(d) => {
                let path = dir.join(&svg_name);
                crate::plot::mix_chart(&path, &format!("lb-bench {}", self.date), &d.mixes)?;
                written.push(path);
                Some(svg_name.as_str())
            }
            None => None,
        };
        let json = dir.join(format!("{}.json", self.date));
        write_atomic(&json, &(serde_json::to_string_pretty(self)? + "\n"))?;
        written.push(json);
        let md = dir.join(format!("{}.md", self.date));
        write_atomic(&md, &self.markdown(svg))?;
        written.push(md);
        Ok(written)
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Formats a float with `d` decimals.
pub fn f(x: f64, d: usize) -> String {
    if x.is_finite() {
        format!("{x:.d$}")
    } else {
        "-".into()
    }
}
