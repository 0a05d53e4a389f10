//! The real `pier` binary as a child process, for tests that drive it
//! against the test API server: its log goes to a file beside its config
//! (a pipe nobody reads would stall the daemon once it has logged 64 KiB),
//! it is killed on drop, and a failing test prints the log's last lines.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Pier {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Pier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Ok(text) = std::fs::read_to_string(&self.log) {
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("--- last lines of {} ---", self.log.display());
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Pier {
    /// `pier run --config CONFIG`, logging at info.
    pub fn start(config: &Path) -> Pier {
        Self::start_logging(config, "pier=info")
    }

    /// The same with a `PIER_LOG` filter.
    pub fn start_logging(config: &Path, filter: &str) -> Pier {
        let log = config.with_extension("log");
        let err = File::create(&log).expect("create the log file");
        let child = Command::new(env!("CARGO_BIN_EXE_pier"))
            .args(["run", "--config"])
            .arg(config)
            .env("PIER_LOG", filter)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start pier");
        Pier { child, log }
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// The end of this process's lease holder identity.
    pub fn holder_suffix(&self) -> String {
        format!("_{}", self.child.id())
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
