//! Progress for the long CLI operations. Work that cannot report how far
//! it is (a ceremony step, a setup, a proof) shows a spinner with the time
//! it has taken; a task's rounds and a model's download show as bars. All
//! draw only on a terminal, so scripts and logs see the result lines alone.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A spinner for one long step, cleared when the step ends.
pub struct Working(ProgressBar);

pub fn working(what: impl Into<String>) -> Working {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.into());
    bar.enable_steady_tick(Duration::from_millis(120));
    Working(bar)
}

impl Drop for Working {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// A bar over a task's `rounds`; lines printed through it stay above it.
pub struct Rounds(ProgressBar);

pub fn rounds(task_id: &str, rounds: u32, closed: u32) -> Rounds {
    let bar = ProgressBar::new(u64::from(rounds));
    bar.set_style(
        ProgressStyle::with_template("{prefix} round {pos}/{len} {bar:30} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(task_id.to_owned());
    bar.set_position(u64::from(closed));
    Rounds(bar)
}

impl Rounds {
    pub fn closed(&self, rounds_closed: u32) {
        self.0.set_position(u64::from(rounds_closed));
    }

    /// Prints `line` above the bar, or alone when no bar is drawn.
    pub fn say(&self, line: &str) {
        if self.0.is_hidden() {
            println!("{line}");
        } else {
            self.0.println(line);
        }
    }
}

impl Drop for Rounds {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// A bar over the bytes of a file being received.
pub struct Bytes(ProgressBar);

pub fn bytes(what: impl Into<String>) -> Bytes {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} ({bytes_per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.into());
    Bytes(bar)
}

impl Bytes {
    pub fn received(&self, got: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(got);
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
