//! The building blocks every part of the benchmark renders its figures
//! with: tables (aligned text for stdout, markdown for the report), targets
//! with MET / NOT MET, and the [`Section`] each part's report implements.
//! A leaf: it knows none of the parts.

use serde::Serialize;

/// How one part of the benchmark shows its figures: lines on stdout, and a
/// section of the markdown report.
pub trait Section {
    /// The section's heading in the markdown report.
    const TITLE: &'static str;
    /// What the part prints on stdout.
    fn lines(&self) -> Vec<String>;
    /// The section's markdown, without its heading.
    fn markdown(&self) -> String;
}

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

/// Formats a float with `d` decimals.
pub fn f(x: f64, d: usize) -> String {
    if x.is_finite() {
        format!("{x:.d$}")
    } else {
        "-".into()
    }
}
