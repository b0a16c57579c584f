//! The benchmark reset harness (anycast-ebpf/src/bin/bench_reset.rs), loaded: BPF_PROG_RUN
//! with `repeat > 1` reuses one buffer (net/bpf/test_run.c), and live-frames mode recycles
//! its pages with their data pointers reset but their bytes as the last run left them; so
//! the harness restores the frame before every run and tail-calls the program under test.

use anycast_common::bench::{RESET_MAX_FRAME, ResetFrame};
use anycast_user::datapath::object::BENCH_RESET;
use anyhow::{Context, Result, ensure};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{ProgramFd, TestRun, TestRunOptions, Xdp},
};

use crate::harness::{Action, xdp_md};

/// Room in the output buffer for what a program adds to a frame.
const OUTPUT_ROOM: usize = 256;

/// The harness program with its maps.
pub struct ResetHarness {
    ebpf: Ebpf,
    frame: Array<MapData, ResetFrame>,
    target: ProgramArray<MapData>,
    /// The per-CPU run counter the harness stamps into the frame.
    runs: PerCpuArray<MapData, u32>,
}

impl ResetHarness {
    pub fn load() -> Result<ResetHarness> {
        let mut ebpf = Ebpf::load(BENCH_RESET).context("loading the bench_reset object")?;
        let prog: &mut Xdp = ebpf.program_mut("bench_reset").context("no program bench_reset")?.try_into()?;
        prog.load().context("loading bench_reset into the kernel")?;
        let frame = Array::try_from(ebpf.take_map("RESET_FRAME").context("no map RESET_FRAME")?)?;
        let target = ProgramArray::try_from(ebpf.take_map("TARGET").context("no map TARGET")?)?;
        let runs = PerCpuArray::try_from(ebpf.take_map("RUNS").context("no map RUNS")?)?;
        Ok(ResetHarness { ebpf, frame, target, runs })
    }

    pub fn prepare(&mut self, frame: &[u8], vary_offset: u32, target: &ProgramFd) -> Result<()> {
        ensure!(
            frame.len() <= RESET_MAX_FRAME,
            "frame of {} bytes: the harness restores at most {RESET_MAX_FRAME}",
            frame.len()
        );
        let mut reset = ResetFrame { len: frame.len() as u32, vary_offset, ..ResetFrame::default() };
        reset.bytes[..frame.len()].copy_from_slice(frame);
        self.frame.set(0, reset, 0).context("writing RESET_FRAME")?;
        self.target.set(0, target, 0).context("writing TARGET[0]")?;
        Ok(())
    }

    /// Restarts the run counter on every CPU: the next `n` stamped runs stamp 1..=n again
    /// (a round of ACKs then matches the round of SYNs before it, flow for flow).
    pub fn reset_runs(&mut self) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let zero = PerCpuValues::try_from(vec![0u32; cpus]).context("per-CPU values")?;
        self.runs.set(0, zero, 0).context("resetting RUNS")
    }

    /// `repeat` repetitions of `frame` arriving on `ingress`: the last verdict, the frame as
    /// the last repetition left it, and the kernel's mean time per repetition in ns.
    pub fn run(&self, frame: &[u8], ingress: u32, repeat: u32) -> Result<(Action, Vec<u8>, f64)> {
        let prog = self.program()?;
        let ctx = xdp_md(frame.len(), ingress);
        let mut out = vec![0u8; frame.len() + OUTPUT_ROOM];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat,
                ..TestRunOptions::new()
            })
            .context("BPF_PROG_RUN of bench_reset")?;
        out.truncate(result.data_size_out as usize);
        let action = Action::from_code(result.return_value);
        ensure!(action != Action::Aborted, "the harness aborted: RESET_FRAME or TARGET[0] is not set up");
        Ok((action, out, result.duration.as_nanos() as f64))
    }
}

impl ResetHarness {
    /// The harness program itself, e.g. for a live-frames run.
    pub fn program(&self) -> Result<&Xdp> {
        Ok(self.ebpf.program("bench_reset").context("no program bench_reset")?.try_into()?)
    }
}
