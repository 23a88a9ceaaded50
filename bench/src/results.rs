//! The results of one `lb-bench all` run: the JSON document, the markdown
//! report (each part's own section under its heading) and the chart.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    control::ControlReport,
    dataplane::DataplaneReport,
    quality::QualityReport,
    report::{targets_table, Section, Target},
    scaling::ScalingReport,
    sys,
    trafgen::TrafgenReport,
};

/// A part that failed, and why.
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
    pub dataplane: Option<DataplaneReport>,
    pub scaling: Option<ScalingReport>,
    pub control: Option<ControlReport>,
    pub maglev_quality: Option<QualityReport>,
    pub trafgen: Option<TrafgenReport>,
    pub targets: Vec<Target>,
    pub errors: Vec<PartError>,
}

/// A part's section: its heading, then its own markdown.
fn section<S: Section>(part: &S) -> String {
    format!("\n## {}\n\n{}", S::TITLE, part.markdown())
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
            md += &section(d);
            if let Some(svg) = svg_name {
                md += &format!("\n![Mpps per traffic mix, balancer next to the XDP_TX floor]({svg})\n");
            }
        }
        if let Some(s) = &self.scaling {
            md += &section(s);
        }
        if let Some(c) = &self.control {
            md += &section(c);
        }
        if let Some(q) = &self.maglev_quality {
            md += &section(q);
        }
        if let Some(t) = &self.trafgen {
            md += &section(t);
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
