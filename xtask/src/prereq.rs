//! Prerequisites: find what building and running anycast needs, install what is missing
//! when this process can (Debian packages as root, `cargo install bpf-linker`, mounting
//! bpffs), and otherwise stop with one paragraph naming what is missing and the command that
//! fixes it. Every check is cheap, so a second run only reports "ok".
//!
//! The facts relied on are in ../shared/TOOLCHAIN.md: Debian 12's `libstd-rust-web-dev-bpf`
//! ships a prebuilt `core` for `bpfel-unknown-none` made for Debian's `/usr/bin/rustc`
//! (LLVM 22); the other route is a rustup nightly with `rust-src` (`-Z build-std=core`).
//! Either way `bpf-linker` must be built against the same LLVM major.

use std::{
    collections::BTreeSet,
    fs, io,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
};

use thiserror::Error;

use crate::toolchain;

/// Everything the project installs from Debian, in one place. Build: the Rust toolchain
/// with the BPF `core`, and what bpf-linker links against. Run and tests: `ip` (netns,
/// veth), `bpftool` and `ethtool` (inspecting programs and veth XDP statistics), `nftables`
/// (the kernel-path baseline of `cargo xtask bench`: DNAT and forwarding), `bird2` (the BGP
/// speaker the controller drives).
pub const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "bpftool",
    "ethtool",
    "nftables",
    // A real Prometheus server scraping a lab's /metrics (tests/tests/prometheus.rs).
    "prometheus",
    // The BGP speaker the controller drives (anycast-user/src/bgp/, tests/tests/bgp.rs).
    "bird2",
    // `systemd-analyze verify` of deploy/anycast.service (tests/tests/deploy.rs).
    "systemd",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
/// Installed by `libstd-rust-web-dev-bpf`.
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
const BPFFS: &str = "/sys/fs/bpf";
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum SetupError {
    #[error("{what} is missing: {why}. Fix: {fix}")]
    Missing { what: String, why: String, fix: String },
    #[error("`{command}` failed ({status}); see its output above. {hint}")]
    Failed { command: String, status: ExitStatus, hint: String },
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
}

/// What the caller is about to do; it decides which gaps are fatal.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// `cargo xtask setup`: install everything; privileges are reported, not required.
    Setup,
    /// Build only: a BPF toolchain and bpf-linker.
    Build,
    /// Tests: as build, plus runtime pieces; tests that need the kernel skip themselves
    /// (fail under CI).
    Test,
    /// Load and attach programs: the kernel must allow it, and bpffs is required.
    Run,
}

/// Which compiler builds the XDP object (anycast-user/build.rs makes the same choice).
enum BpfToolchain {
    Debian,
    Nightly,
}

impl BpfToolchain {
    fn describe(&self) -> &'static str {
        match self {
            BpfToolchain::Debian => "Debian rustc with prebuilt BPF core",
            BpfToolchain::Nightly => "rustup nightly with rust-src",
        }
    }
}

/// Collects what was done and what is only worth a warning, for the closing report.
struct Report {
    did: Vec<String>,
    ok: Vec<String>,
    warnings: Vec<String>,
}

pub fn ensure(goal: Goal) -> Result<(), SetupError> {
    let mut report = Report { did: Vec::new(), ok: Vec::new(), warnings: Vec::new() };
    // apt-get needs root itself; what the kernel allows is asked of the kernel.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let kernel = testkit::require::kernel();
    let debian = is_debian();

    let missing_packages = if debian { install_packages(root, &mut report)? } else { BTreeSet::new() };
    let bpf_toolchain = ensure_bpf_toolchain(&missing_packages)?;
    report.ok.push(bpf_toolchain.describe().to_owned());
    ensure_bpf_linker(debian, &missing_packages, &mut report)?;

    if goal != Goal::Build {
        check_runtime(goal, kernel, &missing_packages, &mut report)?;
    }

    for line in &report.warnings {
        eprintln!("setup: warning: {line}");
    }
    if report.did.is_empty() {
        println!("setup: ok ({})", report.ok.join(", "));
    } else {
        println!("setup: done: {}; ok ({})", report.did.join("; "), report.ok.join(", "));
    }
    Ok(())
}

/// Installs missing Debian packages when root; returns those still missing (not root),
/// which later checks turn into errors only if they matter.
fn install_packages(root: bool, report: &mut Report) -> Result<BTreeSet<&'static str>, SetupError> {
    let missing = missing_debian_packages()?;
    if missing.is_empty() {
        report.ok.push(format!("{} Debian packages", APT_PACKAGES.len()));
        return Ok(missing);
    }
    let list = missing.iter().copied().collect::<Vec<_>>().join(" ");
    if !root {
        report.warnings.push(format!(
            "Debian packages not installed (needs root): {list}; fix: `sudo apt-get install -y {list}`"
        ));
        return Ok(missing);
    }
    println!("setup: installing Debian packages: {list}");
    // The package lists may be absent or stale on a fresh machine; refresh only when
    // something is actually missing so that a second run touches nothing.
    run(apt_get().args(["update", "-q"]), "check the network access to the Debian mirror")?;
    run(
        apt_get().args(["install", "-y", "-q", "--no-install-recommends"]).args(&missing),
        "rustc-web, libstd-rust-web-dev-bpf and llvm-22-dev come from bookworm-security: check that it is in the apt sources",
    )?;
    let still = missing_debian_packages()?;
    if !still.is_empty() {
        let list = still.iter().copied().collect::<Vec<_>>().join(" ");
        return Err(SetupError::Missing {
            what: format!("Debian packages {list}"),
            why: "apt-get reported success but they are still not installed".into(),
            fix: format!("`apt-get install -y {list}` and read its output"),
        });
    }
    report.did.push(format!("installed {list}"));
    Ok(still)
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn is_debian() -> bool {
    Path::new("/etc/debian_version").exists() && command_answers(Command::new("dpkg-query").arg("--version"))
}

fn missing_debian_packages() -> Result<BTreeSet<&'static str>, SetupError> {
    // dpkg-query exits 1 when a package is unknown to dpkg but still lists the known ones.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(APT_PACKAGES)
        .stderr(Stdio::null())
        .output()
        .map_err(|source| SetupError::Spawn { command: "dpkg-query".into(), source })?;
    let listing = String::from_utf8_lossy(&out.stdout);
    Ok(missing_from_listing(&listing))
}

/// Packages of APT_PACKAGES not marked "ii" (installed) in a dpkg-query listing.
fn missing_from_listing(listing: &str) -> BTreeSet<&'static str> {
    let installed: BTreeSet<&str> = listing
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| status.starts_with("ii"))
        .map(|(name, _)| name)
        .collect();
    APT_PACKAGES.iter().copied().filter(|p| !installed.contains(p)).collect()
}

fn ensure_bpf_toolchain(missing: &BTreeSet<&str>) -> Result<BpfToolchain, SetupError> {
    if Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_BPF_CORE).exists() {
        return Ok(BpfToolchain::Debian);
    }
    if nightly_has_rust_src() {
        return Ok(BpfToolchain::Nightly);
    }
    let fix = if missing.contains("libstd-rust-web-dev-bpf") || missing.contains("rustc-web") {
        "run `sudo cargo xtask setup` (installs rustc-web and libstd-rust-web-dev-bpf), or \
         `sudo apt-get install -y rustc-web libstd-rust-web-dev-bpf`, or \
         `rustup toolchain install nightly --component rust-src`"
    } else {
        "on Debian 12 run `sudo cargo xtask setup`; elsewhere \
         `rustup toolchain install nightly --component rust-src`"
    };
    Err(SetupError::Missing {
        what: "a Rust toolchain for bpfel-unknown-none".into(),
        why: format!(
            "neither Debian's prebuilt BPF core ({DEBIAN_BPF_CORE} with {DEBIAN_RUSTC}) nor a rustup \
             nightly with the rust-src component is installed, so the XDP program cannot be compiled"
        ),
        fix: fix.into(),
    })
}

fn nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).output()
    else {
        return false;
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    out.status.success() && sysroot.join("lib/rustlib/src/rust/library/core").exists()
}

fn ensure_bpf_linker(debian: bool, missing: &BTreeSet<&str>, report: &mut Report) -> Result<(), SetupError> {
    let found = bpf_linker_version();
    if let Some(version) = &found {
        if version.starts_with("0.13.") {
            report.ok.push(format!("bpf-linker {version}"));
            return Ok(());
        }
    }
    let install = format!(
        "PATH={LLVM_PREFIX}/bin:$PATH LLVM_SYS_221_PREFIX={LLVM_PREFIX} cargo install bpf-linker \
         --version {BPF_LINKER_VERSION} --locked --no-default-features --features llvm-22"
    );
    let llvm_packages = ["llvm-22-dev", "libpolly-22-dev", "zlib1g-dev", "libzstd-dev"];
    let llvm_missing: Vec<&str> = llvm_packages.iter().copied().filter(|p| missing.contains(p)).collect();
    let have_llvm = Path::new(LLVM_PREFIX).join("bin/llvm-config").exists();
    if !have_llvm || !llvm_missing.is_empty() {
        let packages = if llvm_missing.is_empty() { llvm_packages.to_vec() } else { llvm_missing };
        return Err(SetupError::Missing {
            what: format!("bpf-linker {BPF_LINKER_VERSION}"),
            why: format!(
                "it is {} and cannot be built here because LLVM 22 development files \
                 ({}) are not installed",
                found.map_or("not on PATH".to_owned(), |v| format!("at version {v}")),
                packages.join(" ")
            ),
            fix: if debian {
                format!(
                    "run `sudo cargo xtask setup`, or `sudo apt-get install -y {}` then `{install}`",
                    packages.join(" ")
                )
            } else {
                format!(
                    "install LLVM 22 with its development files under {LLVM_PREFIX}, then `{install}`; \
                     or build bpf-linker against the LLVM you have (`--features llvm-21` or `llvm-23`, \
                     with LLVM_SYS_211_PREFIX or LLVM_SYS_231_PREFIX)"
                )
            },
        });
    }
    println!(
        "setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 with cargo install \
         (takes a few minutes)"
    );
    let mut cmd = toolchain::cargo();
    cmd.env("PATH", prepend_path(&Path::new(LLVM_PREFIX).join("bin")))
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])
        .args(["--no-default-features", "--features", "llvm-22"]);
    run(&mut cmd, &format!("To retry by hand: `{install}`"))?;
    match bpf_linker_version() {
        Some(v) if v.starts_with("0.13.") => {
            report.did.push(format!("installed bpf-linker {v}"));
            Ok(())
        }
        _ => Err(SetupError::Missing {
            what: format!("bpf-linker {BPF_LINKER_VERSION}"),
            why: format!(
                "cargo install succeeded but `bpf-linker --version` does not answer 0.13 from {}",
                toolchain::cargo_bin_dir().display()
            ),
            fix: format!("add {} to PATH", toolchain::cargo_bin_dir().display()),
        }),
    }
}

/// The version `bpf-linker --version` answers ("bpf-linker 0.13.0"), looked up on the PATH
/// the builds will use.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").env("PATH", toolchain::path()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_bpf_linker_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_bpf_linker_version(answer: &str) -> Option<String> {
    answer.split_whitespace().nth(1).map(str::to_owned)
}

fn prepend_path(dir: &Path) -> std::ffi::OsString {
    let rest = toolchain::path();
    std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&rest)))
        .unwrap_or(rest)
}

fn check_runtime(
    goal: Goal,
    kernel: &Result<(), String>,
    missing: &BTreeSet<&str>,
    report: &mut Report,
) -> Result<(), SetupError> {
    if !command_answers(Command::new("ip").arg("-V")) {
        let err = SetupError::Missing {
            what: "the `ip` command (iproute2)".into(),
            why: "network namespaces and veth pairs for tests and the lab are made with it".into(),
            fix: "`sudo apt-get install -y iproute2` (or `sudo cargo xtask setup`)".into(),
        };
        if goal == Goal::Run {
            return Err(err);
        }
        report.warnings.push(err.to_string());
    }
    for tool in ["bpftool", "ethtool"] {
        if missing.contains(tool) {
            report.warnings.push(format!("{tool} is not installed; tests that inspect with it will fail"));
        }
    }

    match kernel {
        Ok(()) => report.ok.push("the kernel loads BPF programs and makes network namespaces".to_owned()),
        Err(why) => {
            let err = SetupError::Missing {
                what: "privilege".into(),
                why: why.clone(),
                fix: "run as root, e.g. `sudo -E env PATH=\"$PATH\" cargo xtask ...`".into(),
            };
            if goal == Goal::Run {
                return Err(err);
            }
            report.warnings.push(match goal {
                Goal::Test if testkit::require::ci() => {
                    format!("{err} Under CI every kernel and netns test will fail.")
                }
                Goal::Test => format!("{err} Kernel and netns tests will report themselves skipped."),
                _ => err.to_string(),
            });
        }
    }

    if bpffs_mounted() {
        report.ok.push(format!("bpffs at {BPFFS}"));
    } else if kernel.is_err() {
        let err = SetupError::Missing {
            what: format!("bpffs at {BPFFS}"),
            why: "pinned maps and links live there".into(),
            fix: format!("`sudo mount -t bpf bpf {BPFFS}`"),
        };
        report.warnings.push(err.to_string());
    } else {
        println!("setup: mounting bpffs at {BPFFS}");
        run(
            Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]),
            "the kernel needs CONFIG_BPF_SYSCALL; in a container, the host must allow mounting bpffs",
        )?;
        report.did.push(format!("mounted bpffs at {BPFFS}"));
    }

    if Path::new(KERNEL_BTF).exists() {
        report.ok.push("kernel BTF".into());
    } else {
        report.warnings.push(format!(
            "{KERNEL_BTF} is absent: this kernel was built without BTF (CONFIG_DEBUG_INFO_BTF); \
             use a kernel >= 5.8 that has it"
        ));
    }
    Ok(())
}

fn bpffs_mounted() -> bool {
    fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
        })
    })
}

fn command_answers(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command, hint: &str) -> Result<(), SetupError> {
    let command = toolchain::describe(cmd);
    let status = cmd.status().map_err(|source| SetupError::Spawn { command: command.clone(), source })?;
    if status.success() { Ok(()) } else { Err(SetupError::Failed { command, status, hint: hint.to_owned() }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_marks_only_ii_as_installed() {
        let listing = "rustc-web ii \nbpftool rc \niproute2 ii \n";
        let missing = missing_from_listing(listing);
        assert!(!missing.contains("rustc-web"));
        assert!(!missing.contains("iproute2"));
        assert!(missing.contains("bpftool"), "removed-but-configured (rc) is not installed");
        assert!(missing.contains("llvm-22-dev"), "absent from the listing means missing");
    }

    #[test]
    fn bpf_linker_version_is_second_word() {
        assert_eq!(parse_bpf_linker_version("bpf-linker 0.13.0\n").as_deref(), Some("0.13.0"));
        assert_eq!(parse_bpf_linker_version(""), None);
    }
}
