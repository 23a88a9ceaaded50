//! Config errors: each [`Problem`] names the line, the column and the key;
//! a [`ConfigError`] names the file.

use std::{collections::BTreeMap, fmt, ops::Range, path::PathBuf};

/// One problem in a config file, located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based; a problem with no better place points at line 1, column 1.
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}: {}", self.line, self.column, self.key, self.message)
    }
}

#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .problems.iter().map(|p| format!("{file}: {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { file: String, problems: Vec<Problem> },
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            ConfigError::Read { .. } => &[],
        }
    }
}

/// Collects problems with their positions in the source text.
pub(super) struct Checker<'a> {
    pub text: &'a str,
    pub problems: Vec<Problem>,
    /// Also check the host: the pin directory's file system, the token file.
    pub check_host: bool,
}

impl<'a> Checker<'a> {
    pub fn new(text: &'a str, check_host: bool) -> Self {
        Self { text, problems: Vec::new(), check_host }
    }

    /// Line and column (1-based) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..floor_char_boundary(self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
        (line, column)
    }

    pub fn add(&mut self, span: &Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.problems.push(Problem { line, column, key: key.into(), message: message.into() });
    }

    /// Records a TOML syntax or shape error. toml names neither the key of
    /// a missing field nor the table of an unknown one: both are recovered
    /// from the text (the table headers before the span).
    pub fn add_toml_error(&mut self, e: &toml::de::Error) {
        let span = e.span().unwrap_or(0..0);
        let table = table_path(self.text, span.start);
        let message = e.message().trim_end().to_string();
        let leaf = match message.strip_prefix("missing field `").and_then(|m| m.split_once('`')) {
            Some((field, _)) => field.to_string(),
            None => key_on_line(self.text, span.start),
        };
        let key = match (table.is_empty(), leaf.is_empty()) {
            (true, _) => leaf,
            (false, true) => table,
            (false, false) if leaf.starts_with('[') => table,
            (false, false) => format!("{table}.{leaf}"),
        };
        self.add(&span, key, message);
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// The key of the line an offset is on (`key = value`), or the line itself.
fn key_on_line(text: &str, offset: usize) -> String {
    let offset = floor_char_boundary(text, offset);
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((k, _)) => k.trim().to_string(),
        None => line.trim().to_string(),
    }
}

/// The path of the table an offset is in, with array indices
/// (`vip[1].backend[0]`), from the `[table]` and `[[array]]` headers up to
/// and including the offset's line.
pub(super) fn table_path(text: &str, offset: usize) -> String {
    let offset = floor_char_boundary(text, offset);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    // Elements seen so far of each array of tables, by dotted name.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut current = String::new();
    for line in text[..end].lines().map(str::trim) {
        let (name, array) = if let Some(n) = line.strip_prefix("[[").and_then(|l| l.split_once("]]")) {
            (n.0.trim(), true)
        } else if let Some(n) = line.strip_prefix('[').and_then(|l| l.split_once(']')) {
            (n.0.trim(), false)
        } else {
            continue;
        };
        if array {
            *counts.entry(name.to_string()).or_default() += 1;
            // A new element starts its sub-arrays afresh.
            let prefix = format!("{name}.");
            counts.retain(|k, _| !k.starts_with(&prefix));
        }
        let mut path = String::new();
        let mut dotted = String::new();
        for part in name.split('.').map(str::trim) {
            if !dotted.is_empty() {
                dotted.push('.');
                path.push('.');
            }
            dotted.push_str(part);
            path.push_str(part);
            if let Some(n) = counts.get(&dotted) {
                path.push_str(&format!("[{}]", n.saturating_sub(1)));
            }
        }
        current = path;
    }
    current
}
