//! The kernel harness: the real XDP object, loaded into the running kernel, frames run
//! through it with BPF_PROG_RUN (aya [`TestRun`]).
//!
//! BPF_PROG_RUN executes the verified, JIT-compiled program on a copy of the frame in a
//! kernel buffer with XDP headroom, exactly as for a received packet, and hands back the
//! return code and the frame as the program left it. With `ctx_in` (an `xdp_md` carrying
//! `ingress_ifindex`) the frame appears to arrive on that interface, which is what
//! `bpf_fib_lookup` needs; the ifindex is resolved in the network namespace of the calling
//! thread, so run under [`crate::netns::Netns::run`] for a test topology.

use anycast_common::maps::{FLOWS, PROGRAM};
use anycast_user::datapath::{
    maglev::Shape,
    maps::{DataPathMaps, MapsError},
    object::{ANYCAST, NOOP},
};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] EbpfError),
    #[error("the object has no XDP program {0:?}")]
    NoProgram(&'static str),
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: ProgramError },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("parsing the XDP object: {0}")]
    Parse(#[from] aya_obj::ParseError),
}

pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// Room for what the program may add to a frame (encapsulation, an ICMP reply that quotes
/// more than a tiny input) in the BPF_PROG_RUN output buffer. The kernel fails the run with
/// ENOSPC when the output does not fit.
const OUTPUT_ROOM: usize = 512;

/// An XDP verdict, named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    Other(u32),
}

impl Action {
    pub fn from_code(code: u32) -> Action {
        match code {
            0 => Action::Aborted,
            1 => Action::Drop,
            2 => Action::Pass,
            3 => Action::Tx,
            4 => Action::Redirect,
            n => Action::Other(n),
        }
    }
}

/// What one BPF_PROG_RUN returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub action: Action,
    /// The frame as the program left it (after any head/tail adjustment).
    pub frame: Vec<u8>,
}

/// `struct xdp_md` as BPF_PROG_RUN takes it in `ctx_in`: the kernel requires `data` = 0,
/// `data_end` = the frame length, `data_meta` = 0, `egress_ifindex` = 0.
pub fn xdp_md(frame_len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let fields = [0, frame_len as u32, 0, ingress_ifindex, 0, 0];
    let mut out = [0u8; 24];
    for (chunk, v) in out.chunks_exact_mut(4).zip(fields) {
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    out
}

/// One loaded instance of an XDP object with its program ready to run.
pub struct DataPath {
    ebpf: Ebpf,
    program: &'static str,
    /// What its `MAGLEV` template accepts (the object's own template: aya made the map).
    maglev: Shape,
}

impl DataPath {
    /// The anycast data path with the flow table at its default size.
    pub fn load() -> Result<DataPath> {
        Self::load_anycast(None)
    }

    /// The anycast data path; `flow_entries` overrides the `FLOWS` capacity (what the
    /// controller does from its configuration), e.g. a tiny table for eviction tests.
    pub fn load_anycast(flow_entries: Option<u32>) -> Result<DataPath> {
        Self::load_program(Self::loader(flow_entries).load(ANYCAST)?, PROGRAM, ANYCAST)
    }

    /// Another build of the anycast data path, from its object file (the benchmark's
    /// baseline, e.g. main's build beside this one).
    pub fn load_anycast_file(object: &std::path::Path, flow_entries: Option<u32>) -> Result<DataPath> {
        let bytes =
            std::fs::read(object).map_err(|e| EbpfError::FileError { path: object.into(), error: e })?;
        Self::load_program(Self::loader(flow_entries).load(&bytes)?, PROGRAM, &bytes)
    }

    fn loader(flow_entries: Option<u32>) -> EbpfLoader<'static> {
        let mut loader = EbpfLoader::new();
        if let Some(n) = flow_entries {
            loader.map_max_entries(FLOWS, n);
        }
        loader
    }

    /// The no-op baseline program (passes everything, no maps).
    pub fn load_noop() -> Result<DataPath> {
        Self::load_program(Ebpf::load(NOOP)?, "noop", NOOP)
    }

    fn load_program(mut ebpf: Ebpf, name: &'static str, object: &[u8]) -> Result<DataPath> {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or(HarnessError::NoProgram(name))?
            .try_into()
            .map_err(|source| HarnessError::Program { name, source })?;
        prog.load().map_err(|source| HarnessError::Program { name, source })?;
        let maglev = Shape::of_object(object)?.unwrap_or(Shape::Sized);
        Ok(DataPath { ebpf, program: name, maglev })
    }

    /// Takes the maps (typed). The program keeps its own references to them.
    pub fn maps(&mut self) -> Result<DataPathMaps> {
        Ok(DataPathMaps::take(&mut self.ebpf, self.maglev)?)
    }

    /// The loaded program: for BPF_PROG_RUN with options of the caller's own (live frames,
    /// repetitions) or its fd (e.g. for a tail-call map).
    pub fn xdp(&self) -> &Xdp {
        self.ebpf
            .program(self.program)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("program checked at load")
    }

    fn xdp_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(self.program)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .expect("program checked at load")
    }

    /// Runs `frame` through the program once. With `ingress_ifindex`, the frame arrives on
    /// that interface of the calling thread's namespace.
    pub fn run(&self, frame: &[u8], ingress_ifindex: Option<u32>) -> Result<Run> {
        let mut out = vec![0u8; frame.len() + OUTPUT_ROOM];
        let ctx = ingress_ifindex.map(|i| xdp_md(frame.len(), i));
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx.as_ref().map(|c| c.as_slice()),
            ..TestRunOptions::new()
        };
        let result = self
            .xdp()
            .test_run(opts)
            .map_err(|source| HarnessError::Program { name: self.program, source })?;
        out.truncate(result.data_size_out as usize);
        Ok(Run { action: Action::from_code(result.return_value), frame: out })
    }

    /// Attaches the program to `ifindex` (of the calling thread's namespace). It stays
    /// attached until this value is dropped.
    pub fn attach(&mut self, ifindex: u32, mode: XdpMode) -> Result<XdpLinkId> {
        let name = self.program;
        self.xdp_mut()
            .attach_to_if_index(ifindex, mode)
            .map_err(|source| HarnessError::Program { name, source })
    }
}

#[cfg(test)]
mod tests {
    use testkit::require::{Need, require};

    use super::*;

    #[test]
    fn xdp_md_layout() {
        let md = xdp_md(66, 7);
        assert_eq!(&md[4..8], &66u32.to_ne_bytes());
        assert_eq!(&md[12..16], &7u32.to_ne_bytes());
        assert!(md[..4].iter().chain(&md[8..12]).chain(&md[16..]).all(|&b| b == 0));
    }

    #[test]
    fn datapath_harness_runs_the_noop_baseline() {
        if !require("datapath_harness_runs_the_noop_baseline", &[Need::Kernel]) {
            return;
        }
        let dp = DataPath::load_noop().expect("load the no-op program");
        let frame = crate::packet::udp("192.168.1.42", "10.9.9.9", 1, 53).frame();
        let run = dp.run(&frame, None).expect("BPF_PROG_RUN");
        assert_eq!(run, Run { action: Action::Pass, frame });
        // ctx_in with an ingress device of this namespace (loopback is always 1).
        let run = dp.run(&[0u8; 60], Some(1)).expect("BPF_PROG_RUN with ctx_in");
        assert_eq!(run.action, Action::Pass);
    }

    #[test]
    fn action_codes() {
        assert_eq!(Action::from_code(2), Action::Pass);
        assert_eq!(Action::from_code(4), Action::Redirect);
        assert_eq!(Action::from_code(9), Action::Other(9));
    }
}
