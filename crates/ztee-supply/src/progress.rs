//! Progress display for long operations (builds, downloads, scans): a spinner with the current
//! stage on stderr when it is a terminal, plain lines otherwise.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Spinner {
    bar: ProgressBar,
    plain: bool,
}

impl Spinner {
    pub fn new(title: &str) -> Spinner {
        let bar = ProgressBar::new_spinner();
        let plain = bar.is_hidden();
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{elapsed}] {prefix}: {wide_msg}")
        {
            bar.set_style(style);
        }
        bar.set_prefix(title.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Spinner { bar, plain }
    }

    pub fn set(&self, message: &str) {
        if self.plain {
            eprintln!("{}: {message}", self.bar.prefix());
        }
        self.bar.set_message(message.to_string());
    }

    pub fn finish(&self, message: &str) {
        self.bar.finish_and_clear();
        eprintln!("{}: {message}", self.bar.prefix());
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}
