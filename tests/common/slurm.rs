//! A real Slurm cluster for a test (`slurm/test-cluster`): started on a port range of its
//! own, stopped on drop (also when the test panics), with the helpers the Slurm tests share.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub state: PathBuf,
    pub conf: String,
    pub nodes: usize,
}

impl Cluster {
    /// `slurm/test-cluster start --nodes NODES STATE`; its state, and for several nodes
    /// everything the jobs read or write, must lie outside /tmp (each node has its own).
    pub fn start(state: &Path, nodes: usize) -> Cluster {
        // Ports of our own, so a cluster someone left running elsewhere does not collide.
        let port = 20000 + (std::process::id() % 5000) * 4;
        let o = Command::new(repo().join("slurm/test-cluster"))
            .args(["start", "--nodes", &nodes.to_string()])
            .arg(state)
            .env("GRDR_SLURMCTLD_PORT", port.to_string())
            .env("GRDR_SLURMD_PORT", (port + 1).to_string())
            .output()
            .expect("slurm/test-cluster runs");
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "test-cluster start failed:\n{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
        let conf = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export SLURM_CONF="))
            .unwrap_or_else(|| panic!("no SLURM_CONF in: {stdout}"))
            .trim()
            .to_string();
        Cluster { state: state.to_path_buf(), conf, nodes }
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf).env("CI", "true");
        c
    }

    /// Output and errors of a client command, together.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let o = self.cmd(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    }

    /// `slurm/test-cluster ACTION ARGS… STATE` (kill-node I, or start to revive a node).
    pub fn script(&self, args: &[&str]) -> String {
        let o = Command::new(repo().join("slurm/test-cluster")).args(args).arg(&self.state).output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "test-cluster {args:?}: {out}");
        out
    }

    /// The queue and the tails of the daemons' logs: what tells why a wait failed.
    pub fn dump(&self) -> String {
        let mut s = format!("\n==== squeue\n{}", self.run("squeue", &["-r", "-o", "%i %T %r %S %N"]));
        s += &format!("\n==== sinfo\n{}", self.run("sinfo", &["-N", "-o", "%N %T %E"]));
        let mut logs = vec!["slurmctld.log".to_string(), "slurmd.log".to_string()];
        logs.extend((1..=self.nodes).map(|i| format!("slurmd-grdr-n{i}.log")));
        for log in logs {
            let Ok(text) = std::fs::read_to_string(self.state.join(&log)) else { continue };
            let lines: Vec<&str> = text.lines().collect();
            s += &format!("\n==== {log} (tail)\n{}", lines[lines.len().saturating_sub(30)..].join("\n"));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("slurm/test-cluster")).arg("stop").arg(&self.state).output();
    }
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Job logs and point states of a sweep, for a failure message.
pub fn dump_sweep(sweep: &Path) -> String {
    let mut s = String::new();
    if let Ok(entries) = std::fs::read_dir(sweep.join("slurm")) {
        let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for p in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "out")) {
            s += &format!("\n==== {}\n{}", p.display(), std::fs::read_to_string(p).unwrap_or_default());
        }
    }
    if let Ok(entries) = std::fs::read_dir(sweep.join("points")) {
        for e in entries {
            let p = e.unwrap().path().join("state.json");
            s += &format!("\n==== {}\n{}", p.display(), std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
    s
}

/// Polls `cond` every `every` ms until it holds; past `deadline` since `t0`, panics with
/// `what` and `dump()`.
pub fn wait_for(
    t0: Instant,
    deadline: Duration,
    every: u64,
    what: &str,
    dump: impl Fn() -> String,
    mut cond: impl FnMut() -> bool,
) {
    while !cond() {
        if t0.elapsed() > deadline {
            panic!("timed out after {:?} waiting for {what}{}", t0.elapsed(), dump());
        }
        std::thread::sleep(Duration::from_millis(every));
    }
}

pub fn logged_steps(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl")).map(|s| s.lines().count()).unwrap_or(0)
}
