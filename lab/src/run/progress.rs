//! Progress over the measured runs: a bar on a terminal, plain log lines otherwise.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes.
#[derive(Debug)]
pub(super) enum Progress {
    /// A bar on stderr, a terminal.
    Bar(ProgressBar),
    /// One line on stderr per phase and per measured run.
    Lines {
        /// How many runs there are.
        total: usize,
    },
}

impl Progress {
    /// A bar over `total` runs when `terminal`, else log lines.
    pub(super) fn new(total: usize, terminal: bool) -> Self {
        if !terminal {
            return Progress::Lines { total };
        }
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} runs · {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress::Bar(bar)
    }

    /// Says what is happening now (bringing the lab up, warming up).
    pub(super) fn phase(&self, text: &str) {
        match self {
            Progress::Bar(bar) => bar.set_message(text.to_owned()),
            Progress::Lines { .. } => eprintln!("lab run: {text}"),
        }
    }

    /// Says which run is in progress (on the bar only: log lines come when it is done).
    pub(super) fn running(&self, text: &str) {
        if let Progress::Bar(bar) = self {
            bar.set_message(text.to_owned());
        }
    }

    /// Reports that run `index` (from 0) finished, with a one-line summary.
    pub(super) fn done(&self, index: usize, text: &str) {
        match self {
            Progress::Bar(bar) => {
                bar.println(format!(
                    "[{}/{}] {text}",
                    index + 1,
                    bar.length().unwrap_or(0)
                ));
                bar.inc(1);
            }
            Progress::Lines { total } => eprintln!("[{}/{total}] {text}", index + 1),
        }
    }

    /// A line that stays visible above the bar.
    pub(super) fn note(&self, text: &str) {
        match self {
            Progress::Bar(bar) => bar.println(text),
            Progress::Lines { .. } => eprintln!("lab run: {text}"),
        }
    }

    /// Removes the bar.
    pub(super) fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
