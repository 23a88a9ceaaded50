//! Progress display on stderr: an `indicatif` bar on a terminal, plain
//! timestamped lines otherwise (logs, CI). Figures go to stdout through
//! [`Progress::println`], which keeps the bar from tearing them.
//!
//! The bar is redrawn on events only (no ticker thread): a thread waking
//! every 100 ms would share the two CPUs with what is being timed.

use std::{
    io::IsTerminal as _,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    pos: AtomicU64,
    len: AtomicU64,
}

impl Progress {
    /// A display for `len` steps (more can be added with [`Progress::add`]).
    pub fn new(len: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("[{elapsed_precise}] {bar:30.cyan/blue} {pos:>3}/{len:3} {wide_msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar
        });
        Self { bar, start: Instant::now(), pos: AtomicU64::new(0), len: AtomicU64::new(len) }
    }

    pub fn add(&self, steps: u64) {
        let len = self.len.fetch_add(steps, Ordering::Relaxed) + steps;
        if let Some(b) = &self.bar {
            b.set_length(len);
        }
    }

    /// Starts the next step.
    pub fn step(&self, msg: impl AsRef<str>) {
        let pos = self.pos.fetch_add(1, Ordering::Relaxed) + 1;
        let len = self.len.load(Ordering::Relaxed).max(pos);
        match &self.bar {
            Some(b) => {
                b.set_position(pos - 1);
                b.set_message(msg.as_ref().to_string());
            }
            None => eprintln!("[{:>6.1}s] [{pos}/{len}] {}", self.start.elapsed().as_secs_f64(), msg.as_ref()),
        }
    }

    /// A detail within the current step.
    pub fn note(&self, msg: impl AsRef<str>) {
        match &self.bar {
            Some(b) => b.set_message(msg.as_ref().to_string()),
            None => eprintln!("[{:>6.1}s]        {}", self.start.elapsed().as_secs_f64(), msg.as_ref()),
        }
    }

    /// A line of results on stdout.
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.bar {
            Some(b) => b.suspend(|| println!("{}", line.as_ref())),
            None => println!("{}", line.as_ref()),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        eprintln!("[{:>6.1}s] done", self.start.elapsed().as_secs_f64());
    }
}
