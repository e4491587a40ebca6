//! Progress for long work, drawn on stderr only when it is a terminal (indicatif hides the
//! bar otherwise, so journald and pipes get the lifecycle lines alone): a slave catching up
//! with the log, a master's first scan of its directory, and a large file in flight (a
//! master reading and sending it, a slave receiving it).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One bar (or spinner) and the bytes it has counted.
pub struct Progress {
    bar: ProgressBar,
    bytes: u64,
}

impl Progress {
    /// A slave reading the log from `from` up to `head`, as it was when it joined; `None`
    /// off a terminal, so that the hot path pays nothing there.
    pub fn catch_up(from: u64, head: u64) -> Option<Progress> {
        if head <= from || !on_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(Some(head - from), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "catching up {bar:30} {pos}/{len} events, {msg} ({eta} left)",
        );
        bar.set_style(style.unwrap_or_else(|_| ProgressStyle::default_bar()));
        Some(Progress { bar, bytes: 0 })
    }

    /// A master comparing its directory with the log at start; `None` off a terminal.
    pub fn scan() -> Option<Progress> {
        if !on_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style =
            ProgressStyle::with_template("{spinner} scanning: {pos} change(s) published, {msg}");
        bar.set_style(style.unwrap_or_else(|_| ProgressStyle::default_spinner()));
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Some(Progress { bar, bytes: 0 })
    }

    /// A large file in flight: `verb` ("sending", "receiving") the file `what`, `size` bytes
    /// when known; `None` off a terminal or for a file under `LARGE` bytes.
    pub fn file(verb: &str, what: &str, size: Option<u64>) -> Option<Progress> {
        if size.is_some_and(|size| size < LARGE) || !on_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
        let template = match size {
            Some(_) => format!("{verb} {what} {{bar:30}} {{bytes}}/{{total_bytes}} ({{eta}} left)"),
            None => format!("{{spinner}} {verb} {what}: {{bytes}}"),
        };
        let style = ProgressStyle::with_template(&template);
        bar.set_style(style.unwrap_or_else(|_| ProgressStyle::default_bar()));
        Some(Progress { bar, bytes: 0 })
    }

    /// `bytes` more of a file in flight.
    pub fn add_bytes(&mut self, bytes: u64) {
        self.bytes += bytes;
        self.bar.set_position(self.bytes);
    }

    /// The bar at `position` (events read, or changes published), `bytes` more of content.
    pub fn advance(&mut self, position: u64, bytes: u64) {
        self.bytes += bytes;
        self.bar.set_position(position);
        self.bar
            .set_message(format!("{:.1} MiB", self.bytes as f64 / (1 << 20) as f64));
    }

    /// Removes the bar: the lifecycle line that follows says how it ended.
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

/// Files at least this large get a bar while in flight.
pub const LARGE: u64 = 64 << 20;

/// Whether bars are drawn at all: stderr is a terminal (indicatif would hide them
/// otherwise, after formatting every update). Asked once: a large file's upload asks at
/// every chunk.
fn on_terminal() -> bool {
    static TERMINAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TERMINAL.get_or_init(|| std::io::IsTerminal::is_terminal(&std::io::stderr()))
}
