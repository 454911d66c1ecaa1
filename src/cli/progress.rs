//! What the command line tells the person waiting: timestamped lines on stderr, and for a run
//! over many pictures a progress bar on a terminal or a line every few seconds elsewhere.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often a run whose stderr is not a terminal (a log file, a batch system) says where it
/// is.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Progress lines on stderr, unless quiet.
pub struct Progress {
    quiet: bool,
    start: Instant,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Progress {
            quiet,
            start: Instant::now(),
        }
    }

    pub fn say(&self, message: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("[{:7.2} s] {message}", self.elapsed());
        }
    }

    fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// A counter of `total` pictures: a bar when stderr is a terminal, periodic lines when
    /// not, nothing when quiet.
    pub fn counter(&self, total: u64) -> Counter<'_> {
        let shown = match (self.quiet, std::io::stderr().is_terminal()) {
            (true, _) => Shown::Nothing,
            (false, true) => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{bar:32.cyan/blue} {pos}/{len} images  {rate}  {elapsed} elapsed, ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.2} images/s", state.per_sec());
                    })
                    .progress_chars("=> "),
                );
                Shown::Bar(bar)
            }
            (false, false) => Shown::Lines {
                last: Instant::now(),
            },
        };
        Counter {
            progress: self,
            shown,
            total,
            done: 0,
            started: Instant::now(),
        }
    }
}

enum Shown {
    Nothing,
    Bar(ProgressBar),
    Lines { last: Instant },
}

/// Pictures done out of a total, shown as [`Progress::counter`] says.
pub struct Counter<'a> {
    progress: &'a Progress,
    shown: Shown,
    total: u64,
    done: u64,
    started: Instant,
}

impl Counter<'_> {
    /// One more picture finished, well or not.
    pub fn tick(&mut self) {
        self.done += 1;
        match &mut self.shown {
            Shown::Nothing => {}
            Shown::Bar(bar) => bar.inc(1),
            Shown::Lines { last } => {
                if last.elapsed() >= LINE_EVERY || self.done == self.total {
                    *last = Instant::now();
                    let rate = self.rate();
                    let eta = match rate > 0.0 {
                        true => format!("{:.0} s", (self.total - self.done) as f64 / rate),
                        false => "unknown".into(),
                    };
                    self.progress.say(format_args!(
                        "{}/{} images, {rate:.2} images/s, ETA {eta}",
                        self.done, self.total
                    ));
                }
            }
        }
    }

    /// A picture's failure: printed even when quiet, as errors are, above the bar.
    pub fn fail(&self, message: impl std::fmt::Display) {
        match &self.shown {
            Shown::Bar(bar) => bar.suspend(|| failed(message)),
            _ => failed(message),
        }
    }

    /// Pictures per second since the counter started.
    pub fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        match secs > 0.0 {
            true => self.done as f64 / secs,
            false => 0.0,
        }
    }

    /// Takes the bar off the terminal.
    pub fn finish(self) {
        if let Shown::Bar(bar) = self.shown {
            bar.finish_and_clear();
        }
    }
}

/// A picture's failure, on a line of its own: printed even when quiet, as errors are.
pub fn failed(message: impl std::fmt::Display) {
    eprintln!("fpn: failed: {message}");
}
