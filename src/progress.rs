//! Progress on stderr: indicatif bars on a terminal, a few plain lines
//! otherwise (CI logs, pipes). stdout stays free for data.

use std::io::{IsTerminal, Read};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte counter for one long step.
pub struct Bar {
    bar: Option<ProgressBar>,
    label: String,
    pos: u64,
    total: Option<u64>,
    start: Instant,
    last_line: Instant,
}

/// How often a plain line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

impl Bar {
    /// Starts a step of `total` bytes (`None` when unknown).
    pub fn bytes(label: &str, total: Option<u64>) -> Bar {
        let bar = std::io::stderr().is_terminal().then(|| {
            let (bar, template) = match total {
                Some(t) => (
                    ProgressBar::new(t),
                    "{msg:>14} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                ),
                None => (
                    ProgressBar::new_spinner(),
                    "{msg:>14} {spinner} {bytes} {bytes_per_sec}",
                ),
            };
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            bar
        });
        if bar.is_none() {
            match total {
                Some(t) => eprintln!("{label}: {} ...", HumanBytes(t)),
                None => eprintln!("{label} ..."),
            }
        }
        let now = Instant::now();
        Bar {
            bar,
            label: label.to_string(),
            pos: 0,
            total,
            start: now,
            last_line: now,
        }
    }

    pub fn set(&mut self, pos: u64) {
        self.pos = pos;
        match &self.bar {
            Some(b) => b.set_position(pos),
            None if self.last_line.elapsed() >= PLAIN_EVERY => {
                self.last_line = Instant::now();
                match self.total {
                    Some(t) => {
                        eprintln!("{}: {} of {}", self.label, HumanBytes(pos), HumanBytes(t))
                    }
                    None => eprintln!("{}: {}", self.label, HumanBytes(pos)),
                }
            }
            None => {}
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.set(self.pos + n);
    }

    /// Ends the step with its summary line (as dropping it does).
    pub fn finish(self) {
        drop(self)
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        let secs = self.start.elapsed().as_secs_f64();
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        eprintln!("{}: {} in {secs:.1} s", self.label, HumanBytes(self.pos));
    }
}

/// Counts the bytes read through it into a [`Bar`].
pub struct ReadProgress<R> {
    inner: R,
    bar: Bar,
}

impl<R> ReadProgress<R> {
    pub fn new(inner: R, bar: Bar) -> Self {
        ReadProgress { inner, bar }
    }
}

impl<R: Read> Read for ReadProgress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// Counts the bytes written through it into a [`Bar`].
pub struct WriteProgress<W> {
    inner: W,
    bar: Bar,
}

impl<W> WriteProgress<W> {
    pub fn new(inner: W, bar: Bar) -> Self {
        WriteProgress { inner, bar }
    }
}

impl<W: std::io::Write> std::io::Write for WriteProgress<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One line per image while pulling: its layers' bytes so far.
pub struct Pulls {
    multi: Option<indicatif::MultiProgress>,
    bars: Vec<Option<ProgressBar>>,
    names: Vec<String>,
    layers: Vec<std::collections::HashMap<String, (u64, u64)>>,
    start: Instant,
    failed: usize,
}

impl Pulls {
    pub fn new(names: &[String]) -> Pulls {
        let tty = std::io::stderr().is_terminal();
        let multi =
            tty.then(|| indicatif::MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        let bars = names
            .iter()
            .map(|n| {
                multi.as_ref().map(|m| {
                    let b = m.add(ProgressBar::new(0));
                    b.set_style(
                        ProgressStyle::with_template(
                            "{prefix:30!} [{bar:25}] {bytes}/{total_bytes} {msg}",
                        )
                        .expect("static template")
                        .progress_chars("=> "),
                    );
                    b.set_prefix(n.clone());
                    b
                })
            })
            .collect();
        if !tty {
            eprintln!("pulling {} image(s): {}", names.len(), names.join(", "));
        }
        Pulls {
            multi,
            bars,
            names: names.to_vec(),
            layers: vec![Default::default(); names.len()],
            start: Instant::now(),
            failed: 0,
        }
    }

    /// Bytes of one layer of image `i` so far.
    pub fn layer(&mut self, i: usize, layer: &str, current: u64, total: u64) {
        let Some(layers) = self.layers.get_mut(i) else {
            return;
        };
        layers.insert(layer.to_string(), (current, total));
        if let Some(Some(b)) = self.bars.get(i) {
            let (cur, tot) = layers.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1));
            b.set_length(tot);
            b.set_position(cur);
            b.set_message(format!("{} layers", layers.len()));
        }
    }

    /// Image `i` (or one of its images, for an archive) is in the daemon;
    /// "no download" when none of its layers came from a registry (a cache
    /// hit, or a load).
    pub fn done(&mut self, i: usize, id: &str, platform: &str) {
        let short = id
            .trim_start_matches("sha256:")
            .get(..12)
            .unwrap_or(id)
            .to_string();
        let how = match self.layers.get(i).is_some_and(|l| l.is_empty()) {
            true => ", no download",
            false => "",
        };
        match self.bars.get(i) {
            Some(Some(b)) => b.finish_with_message(format!("{short} {platform}{how}")),
            _ => eprintln!(
                "got {} ({short}, {platform}{how}) after {:.1} s",
                self.names.get(i).map_or("?", |s| s.as_str()),
                self.start.elapsed().as_secs_f64()
            ),
        }
    }

    /// A warning, printed above the bars.
    pub fn warn(&mut self, msg: &str) {
        self.say(&format!("warning: {msg}"));
    }

    /// A line printed above the bars.
    pub fn say(&mut self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn failed(&mut self, i: usize, msg: &str) {
        self.failed += 1;
        match self.bars.get(i) {
            Some(Some(b)) => b.abandon_with_message("failed"),
            _ => eprintln!(
                "pulling {} failed: {msg}",
                self.names.get(i).map_or("?", |s| s.as_str())
            ),
        }
    }

    /// Clears the bars; says how long it took when every image came
    /// (`ok`: nothing else failed either).
    pub fn finish(self, ok: bool) {
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
        if ok && self.failed == 0 {
            eprintln!(
                "pulled {} image(s) in {:.1} s",
                self.names.len(),
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}
