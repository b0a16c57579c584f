//! `cargo xtask test`: `cargo test` over the host crates, every test binary run even when
//! one fails, with a closing line that totals them all ("summary: N passed, N failed,
//! N skipped") and names the failures and the skips. Under CI (`CI=true`) a skip is a
//! failure: the tests that cannot run fail themselves (testkit::require), and a skip that
//! got through anyway (an `#[ignore]`d test) fails the run.
//!
//! The `anycast` binary is built once before the tests and handed to them in
//! `ANYCAST_BIN` (and this xtask in `ANYCAST_XTASK`, for the lab's test), so that no test
//! runs a nested cargo. A teardown failure reported by a test (testkit::teardown) and
//! anything a test or lab left behind at the end (namespaces, pins, work directories) fail
//! the run, and what was left is removed.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, IsTerminal, Read, Write},
    path::Path,
    process::Stdio,
    thread,
    time::Instant,
};

use anyhow::{Context, Result, anyhow, bail};

use testkit::{daemon, previous, require, teardown};

use crate::toolchain;

/// Test threads per binary: the cores, but at least two so that tests waiting on the
/// network or the kernel overlap even on a one-core machine.
fn test_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

pub struct Options {
    pub release: bool,
    pub filter: Option<String>,
    /// Passed to every test binary after the filter (e.g. --nocapture).
    pub args: Vec<String>,
    /// More environment for the tests.
    pub env: Vec<(String, String)>,
}

/// The environment variable by which the lab's test finds this xtask.
pub const XTASK_ENV: &str = "ANYCAST_XTASK";

pub fn run(options: &Options, anycast: &Path) -> Result<()> {
    let before: BTreeSet<String> = teardown::leftovers().into_iter().collect();
    let mut cmd = toolchain::cargo();
    // anycast-ebpf only builds for the BPF target (anycast-user's build.rs builds it), and
    // --workspace would select it.
    cmd.args(["test", "--workspace", "--exclude", "anycast-ebpf", "--no-fail-fast"]);
    if options.release {
        cmd.arg("--release");
    }
    cmd.arg("--");
    cmd.args(&options.filter);
    cmd.args(&options.args);
    if std::env::var_os("RUST_TEST_THREADS").is_none() {
        cmd.env("RUST_TEST_THREADS", test_threads().to_string());
    }
    cmd.env(daemon::BIN_ENV, anycast);
    // The upgrade tests run the previous release and migrate its maps: build it once here
    // (cached under target/previous-release) rather than inside a test.
    println!("test: the previous release {} for the upgrade tests (built once, then cached)", previous::TAG);
    let workspace = toolchain::workspace_root();
    let previous = previous::build(workspace).map_err(|e| anyhow!("{e}"))?;
    cmd.env(previous::BIN_ENV, previous);
    // And the last build with a pinned FLOW_SEEN, which a start must retire (found built by
    // the test that needs it).
    previous::build_at(workspace, previous::FLOW_SEEN_COMMIT).map_err(|e| anyhow!("{e}"))?;
    cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
    cmd.env(XTASK_ENV, std::env::current_exe().context("locating xtask's own executable")?);
    println!("test: {}", toolchain::describe(&cmd));

    if std::io::stderr().is_terminal() && std::env::var_os("CARGO_TERM_COLOR").is_none() {
        // cargo's stderr becomes a pipe below; keep its colours for a person at a terminal.
        cmd.env("CARGO_TERM_COLOR", "always");
    }

    let start = Instant::now();
    // Test binaries write their results on stdout, and tests that skip or fail to tear
    // down say so on stderr (where libtest does not capture it). Both are read through, each
    // line echoed, to total the results.
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("starting cargo test")?;
    let stderr = child.stderr.take().context("cargo test stderr")?;
    let reports = thread::spawn(move || -> std::io::Result<(Vec<String>, Vec<String>)> {
        let (mut skipped, mut teardowns) = (Vec::new(), Vec::new());
        echo_lines(stderr, &mut std::io::stderr(), |line| {
            skipped.extend(require::skipped_test(line).map(str::to_owned));
            if teardown::is_warning(line) {
                teardowns.push(line.trim().to_owned());
            }
        })?;
        Ok((skipped, teardowns))
    });
    let mut totals = Totals::default();
    let stdout = child.stdout.take().context("cargo test stdout")?;
    echo_lines(stdout, &mut std::io::stdout(), |line| totals.add(line))
        .context("reading cargo test output")?;
    let status = child.wait().context("waiting for cargo test")?;
    let (early_returns, teardowns) = reports.join().map_err(|_| anyhow!("stderr reader panicked"))??;
    let left: Vec<String> = teardown::leftovers().into_iter().filter(|l| !before.contains(l)).collect();
    for leftover in &left {
        if let Err(e) = teardown::remove(anycast, leftover) {
            eprintln!("test: could not remove {leftover}: {e}");
        }
    }

    if totals.binaries == 0 && !status.success() {
        bail!("cargo test failed ({status}) before running any test; see the compiler output above");
    }
    println!(
        "test: {} test binaries in {:.1}s{}",
        totals.binaries,
        start.elapsed().as_secs_f64(),
        options.filter.as_ref().map(|f| format!(", names containing {f:?}")).unwrap_or_default()
    );
    // A test that skipped returned early and libtest counted it passed.
    let passed = totals.passed.saturating_sub(early_returns.len() as u64);
    let skipped: Vec<String> = totals.ignored.iter().cloned().chain(early_returns).collect();
    println!(
        "summary: {passed} passed, {} failed, {} skipped{}{}",
        totals.failed,
        skipped.len(),
        match skipped.is_empty() {
            true => String::new(),
            false => format!(": {}", skipped.join(", ")),
        },
        match (teardowns.len(), left.len()) {
            (0, 0) => String::new(),
            (t, l) => format!("; {t} teardown failures, {l} things left behind"),
        }
    );
    if !totals.failures.is_empty() {
        let why = match (require::ci(), require::kernel()) {
            (true, Err(why)) => format!(
                "\nunder CI (CI=true) a test that cannot run fails, and the kernel refuses this \
                 process: {why}"
            ),
            _ => String::new(),
        };
        bail!("{} test(s) failed: {}{why}", totals.failures.len(), totals.failures.join(", "));
    }
    if require::ci() && !skipped.is_empty() {
        bail!("under CI (CI=true) a skipped test is a failure: {}", skipped.join(", "));
    }
    if !teardowns.is_empty() || !left.is_empty() {
        bail!(
            "the tests passed but did not clean up: {}{}(removed now)",
            teardowns.join("; "),
            match left.is_empty() {
                true => String::new(),
                false => format!(" left behind: {}; ", left.join(", ")),
            }
        );
    }
    if !status.success() {
        bail!("cargo test failed ({status}); see the output above");
    }
    if let Some(filter) = &options.filter {
        if totals.passed + totals.failed == 0 {
            bail!("no test name contains {filter:?}");
        }
    }
    Ok(())
}

/// Copies `from` to `to` line by line (bytes: test output need not be UTF-8), showing each
/// line, lossily decoded, to `inspect`.
fn echo_lines(from: impl Read, to: &mut impl Write, mut inspect: impl FnMut(&str)) -> std::io::Result<()> {
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line)? > 0 {
        to.write_all(&line)?;
        to.flush()?;
        inspect(String::from_utf8_lossy(&line).trim_end());
        line.clear();
    }
    Ok(())
}

/// Totals over every "test result:" line that libtest prints per test binary, and the names
/// of the tests that failed or were ignored.
#[derive(Default, Debug)]
struct Totals {
    binaries: u64,
    passed: u64,
    failed: u64,
    ignored: Vec<String>,
    failures: Vec<String>,
}

impl Totals {
    fn add(&mut self, line: &str) {
        // "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; ..."
        if let Some(rest) = line.strip_prefix("test result: ") {
            self.binaries += 1;
            for part in rest.split([';', '.']) {
                let mut words = part.split_whitespace();
                let (Some(n), Some(what)) = (words.next(), words.next()) else { continue };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    _ => {}
                }
            }
        } else if let Some((name, outcome)) = line.strip_prefix("test ").and_then(|l| l.split_once(" ... ")) {
            // "test lab::tests::x ... FAILED", "test y ... ignored" (or "ignored, why")
            match outcome {
                "FAILED" => self.failures.push(name.to_owned()),
                o if o.starts_with("ignored") => self.ignored.push(name.to_owned()),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_result_lines_and_collect_failures() {
        let mut totals = Totals::default();
        for line in [
            "running 3 tests",
            "test a::ok ... ok",
            "test a::bad ... FAILED",
            "test a::later ... ignored, needs a fix",
            "test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 2 filtered out; finished in 1.50s",
        ] {
            totals.add(line);
        }
        assert_eq!((totals.binaries, totals.passed, totals.failed), (2, 5, 1));
        assert_eq!(totals.failures, ["a::bad"]);
        assert_eq!(totals.ignored, ["a::later"]);
    }

    #[test]
    fn echo_lines_copies_bytes_and_shows_lines() {
        let input: &[u8] = b"compiling\n\xff\n*** SKIPPED t: needs the kernel ***\nlast line without newline";
        let mut copy = Vec::new();
        let mut seen = Vec::new();
        echo_lines(input, &mut copy, |line| seen.push(line.to_owned())).unwrap();
        assert_eq!(copy, input, "output is passed through byte for byte");
        assert_eq!(seen.len(), 4);
        assert_eq!(seen.iter().filter_map(|l| require::skipped_test(l)).collect::<Vec<_>>(), ["t"]);
        assert_eq!(seen[3], "last line without newline");
    }
}
