//! The stable-Rust fuzzing engine shared by tests/fuzz_tar.rs and
//! tests/fuzz_parsers.rs (cargo-fuzz needs a nightly toolchain, which this
//! project's machines do not have).
//!
//! A campaign starts from a seed corpus, replays the saved regressions,
//! then mutates corpus entries until its time budget is spent. Each case
//! runs in a thread of its own with a time limit ([`run_limited`]), a panic
//! is caught: the case fails, its input is saved under cargo's
//! `target/tmp/fuzz-failures/` and the test fails naming the seed. The case
//! returns its outcome (what it did, numbers left out); an input with an
//! outcome not seen before joins the in-memory corpus.
//!
//! - `FP_FUZZ_SEED`: the random seed (printed), to replay a run.
//! - `FP_FUZZ_VERBOSE`: print each new outcome.
//! - The time budget is the caller's (`FP_FUZZ_SECONDS` for the tar
//!   fuzzer, `FP_FUZZ_PARSER_SECONDS` for each parser target).

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// xorshift64*: small, fast, replayable.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A number from the environment.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// `FP_FUZZ_SEED`, else one from the clock.
pub fn seed() -> u64 {
    env_u64("FP_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    })
}

/// The case files of a corpus or regressions directory, sorted by path:
/// hidden files, `*.txt` (why a regression was saved) and README* are not
/// cases.
pub fn case_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![];
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if !p.is_file()
                || name.starts_with('.')
                || name.starts_with("README")
                || p.extension().is_some_and(|e| e == "txt")
            {
                continue;
            }
            out.push((p.clone(), fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

/// Runs `f` in a thread of its own: Err when it panics or gives no result
/// within `limit` (the thread is left behind: the test fails anyway).
pub fn run_limited<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("fuzz-case".into())
        .spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(f));
            let _ = tx.send(r);
        })
        .map_err(|e| format!("starting the case's thread: {e}"))?;
    match rx.recv_timeout(limit) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(p)) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {msg}"))
        }
        Err(_) => Err(format!("no result within {} s: a hang", limit.as_secs())),
    }
}

/// What an error says, for telling outcomes apart: its first line (of the
/// whole context chain) without what comes from the input or the machine:
/// quoted strings, paths, hex and digits are collapsed; at most 120
/// characters.
pub fn error_outcome(e: &str) -> String {
    let line = e.lines().next().unwrap_or("");
    let mut out = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for word in line.split_inclusive(' ') {
        let mut w = String::new();
        for c in word.chars() {
            if quoted {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    quoted = false;
                    w.push_str("\"_\"");
                }
                continue;
            }
            if c == '"' {
                quoted = true;
            } else {
                w.push(c);
            }
        }
        if w.contains('/') {
            w = "_/_ ".into();
        }
        out.push_str(&w);
    }
    digits_collapsed(&hex_collapsed(&out))
        .chars()
        .take(120)
        .collect()
}

/// `s` with each run of 12 or more hex digits (digests, IDs) as `_hex_`.
fn hex_collapsed(s: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for c in s.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        if run.len() >= 12 {
            out.push_str("_hex_");
        } else {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// `s` with each run of digits as one `#`.
pub fn digits_collapsed(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('#') {
            out.push('#');
        }
    }
    out
}

/// Saves a failing input (and why it failed, next to it as .txt).
pub fn save_failure(target: &str, ext: &str, input: &[u8], why: &str) -> PathBuf {
    let dir = super::target_tmpdir().join("fuzz-failures");
    fs::create_dir_all(&dir).unwrap();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(input, &mut h);
    let p = dir.join(format!(
        "{target}-{:016x}.{ext}",
        std::hash::Hasher::finish(&h)
    ));
    fs::write(&p, input).unwrap();
    fs::write(p.with_extension("txt"), why).unwrap();
    p
}

/// Byte-level mutations any input takes: bit flips, dictionary bytes and
/// tokens, nudged digits, deletions, insertions, duplicated ranges,
/// truncation and splices with another corpus entry. `dict` holds tokens
/// of the format (keywords, magic numbers).
pub fn havoc(rng: &mut Rng, v: &mut Vec<u8>, corpus: &[Vec<u8>], dict: &[&[u8]]) {
    const BYTES: &[u8] = b"\n =0123456789\0\xff\x7f\x80/.:\"{}[],@";
    for _ in 0..1 + rng.below(4) {
        let len = v.len().max(1);
        match rng.below(11) {
            0 => {
                let i = rng.below(len);
                if let Some(b) = v.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => {
                let i = rng.below(len);
                if let Some(b) = v.get_mut(i) {
                    *b = *rng.pick(BYTES);
                }
            }
            2 => {
                // Nudge a decimal digit (lengths, sizes, counts).
                let i = rng.below(len);
                if let Some(b) = v.get_mut(i) {
                    if b.is_ascii_digit() {
                        *b = if rng.chance(50) { b'9' } else { b'0' };
                    }
                }
            }
            3 => {
                let i = rng.below(len);
                let end = (i + 1 + rng.below(16)).min(v.len());
                if i < end {
                    v.drain(i..end);
                }
            }
            4 => {
                let i = rng.below(len).min(v.len());
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| *rng.pick(BYTES)).collect();
                v.splice(i..i, bytes);
            }
            5 if !dict.is_empty() => {
                let i = rng.below(len).min(v.len());
                let tok = rng.pick(dict).to_vec();
                if rng.chance(50) {
                    let end = (i + tok.len()).min(v.len());
                    v.splice(i..end, tok);
                } else {
                    v.splice(i..i, tok);
                }
            }
            6 => v.truncate(rng.below(len)),
            7 => {
                // Duplicate a range.
                let i = rng.below(len).min(v.len());
                let end = (i + 1 + rng.below(64)).min(v.len());
                let copy = v[i..end].to_vec();
                let at = rng.below(len).min(v.len());
                v.splice(at..at, copy);
            }
            8 if !corpus.is_empty() => {
                let other = rng.pick(corpus);
                let cut = rng.below(len).min(v.len());
                let from = rng.below(other.len().max(1)).min(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            9 => {
                // An interesting little-endian number at a random place.
                let i = rng.below(len);
                let n: u64 = *rng.pick(&[0, 1, 0x7f, 0x80, 0xff, 0xffff, 0xffff_ffff, u64::MAX]);
                let w = *rng.pick(&[1usize, 2, 4, 8]);
                for (k, b) in n.to_le_bytes()[..w].iter().enumerate() {
                    if let Some(x) = v.get_mut(i + k) {
                        *x = *b;
                    }
                }
            }
            _ => {
                // Overwrite with a range of the same input.
                let from = rng.below(len).min(v.len());
                let to = rng.below(len).min(v.len());
                let n = (1 + rng.below(32)).min(v.len() - from).min(v.len() - to);
                let copy = v[from..from + n].to_vec();
                v[to..to + n].copy_from_slice(&copy);
            }
        }
    }
}

/// Recomputes the checksum of every block that looks like a tar header.
pub fn fix_tar_checksums(v: &mut [u8]) {
    for block in v.chunks_exact_mut(512) {
        let magic = &block[257..262];
        if magic != b"ustar" {
            continue;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| b as u32).sum();
        let s = format!("{sum:06o}\0 ");
        block[148..156].copy_from_slice(s.as_bytes());
    }
}

/// A mutator: a new input from one of the corpus (and the corpus, to
/// splice with).
pub type Mutate<'a> = dyn FnMut(&mut Rng, &[u8], &[Vec<u8>]) -> Vec<u8> + 'a;

/// One fuzzing campaign of a target.
pub struct Campaign {
    pub name: String,
    pub seconds: u64,
    pub seed: u64,
    /// The in-memory corpus stops growing here.
    pub max_corpus: usize,
    /// Mutated inputs are cut to this many bytes.
    pub max_len: usize,
    /// The extension of saved failures (`tar`, `bin`, ...).
    pub ext: String,
}

/// What a campaign did.
pub struct Summary {
    pub cases: u64,
    pub outcomes: usize,
    pub regressions: usize,
    pub corpus: usize,
    pub elapsed: Duration,
}

impl Campaign {
    fn fail(&self, input: &[u8], what: &str, why: &str) -> ! {
        let p = save_failure(&self.name, &self.ext, input, why);
        panic!(
            "fuzz {}: {what} (FP_FUZZ_SEED={}) failed: {why}\nsaved as {}: fix the parser, then \
             copy the case into its regressions directory",
            self.name,
            self.seed,
            p.display()
        );
    }

    /// Runs every regression case; panics on the first that fails again.
    pub fn replay(
        &self,
        regressions: &[(PathBuf, Vec<u8>)],
        case: &mut dyn FnMut(&[u8]) -> Result<String, String>,
    ) -> usize {
        let verbose = std::env::var_os("FP_FUZZ_VERBOSE").is_some();
        for (p, input) in regressions {
            match case(input) {
                Ok(o) if verbose => eprintln!("fuzz {}: {}: {o}", self.name, p.display()),
                Ok(_) => {}
                Err(why) => panic!(
                    "fuzz {}: regression {} fails again: {why}",
                    self.name,
                    p.display()
                ),
            }
        }
        regressions.len()
    }

    /// Runs the seeds (each must pass `seed_ok` on its outcome), the
    /// regressions, then mutated cases until the time is up, and prints
    /// the summary line.
    pub fn run(
        &self,
        mut corpus: Vec<Vec<u8>>,
        regressions: &[(PathBuf, Vec<u8>)],
        seed_ok: &dyn Fn(&str) -> bool,
        mutate: &mut Mutate<'_>,
        case: &mut dyn FnMut(&[u8]) -> Result<String, String>,
    ) -> Summary {
        assert!(
            !corpus.is_empty(),
            "fuzz {}: the seed corpus is missing",
            self.name
        );
        let start = Instant::now();
        let mut seen = HashSet::new();
        let verbose = std::env::var_os("FP_FUZZ_VERBOSE").is_some();
        for s in corpus.clone() {
            match case(&s) {
                Ok(o) => {
                    if verbose {
                        eprintln!("fuzz {}: seed: {o}", self.name);
                    }
                    assert!(seed_ok(&o), "fuzz {}: a seed is refused: {o}", self.name);
                    seen.insert(o);
                }
                Err(why) => self.fail(&s, "a seed", &why),
            }
        }
        let regressions = self.replay(regressions, case);
        let mut rng = Rng::new(self.seed);
        let mut cases = 0u64;
        while start.elapsed() < Duration::from_secs(self.seconds) {
            let base = &corpus[rng.below(corpus.len())];
            let mut input = mutate(&mut rng, base, &corpus);
            input.truncate(self.max_len);
            cases += 1;
            match case(&input) {
                Ok(o) => {
                    if verbose && !seen.contains(&o) {
                        eprintln!("fuzz {}: new outcome: {o}", self.name);
                    }
                    if seen.insert(o) && corpus.len() < self.max_corpus {
                        corpus.push(input);
                    }
                }
                Err(why) => self.fail(&input, &format!("case {cases}"), &why),
            }
        }
        let s = Summary {
            cases,
            outcomes: seen.len(),
            regressions,
            corpus: corpus.len(),
            elapsed: start.elapsed(),
        };
        // Past the test harness's capture, so that CI logs show it.
        let _ = writeln!(
            std::io::stderr(),
            "fuzz {}: {} cases, {} distinct outcomes, {} regressions replayed, seed {} ({:.0} s, corpus {})",
            self.name,
            s.cases,
            s.outcomes,
            s.regressions,
            self.seed,
            s.elapsed.as_secs_f64(),
            s.corpus
        );
        assert!(cases > 0, "fuzz {}: no case ran", self.name);
        s
    }
}
