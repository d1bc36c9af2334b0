//! The release `shoal` binary as child processes of a benchmark: started (on a
//! test-bed host or here), waited for until they print that they are ready,
//! killed with SIGKILL when dropped; and one-shot CLI commands.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::shoal_bin;

/// A `shoal` process, killed on drop.
pub struct Proc {
    pub child: Child,
    /// What followed the ready marker on its stdout (its address).
    pub addr: String,
}

impl Proc {
    /// Start `cmd ARGS…` and wait for the stdout line with `marker`; what
    /// follows is `addr`.
    pub fn start(mut cmd: Command, args: &[&str], log: &Path, marker: &'static str) -> Result<Proc> {
        let mut child = cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .env("RUST_LOG", "info")
            .spawn()
            .context("start shoal")?;
        let out = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(rest) = line.split(marker).nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Ok(Proc { child, addr }),
            Err(_) => {
                let _ = child.kill();
                bail!("shoal {args:?} did not start: {}", std::fs::read_to_string(log).unwrap_or_default())
            }
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Run `shoal ARGS…`; its stdout, or an error with both outputs.
pub fn cli(args: &[&str]) -> Result<String> {
    let out = Command::new(shoal_bin()?).args(args).output()?;
    if !out.status.success() {
        bail!("shoal {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
