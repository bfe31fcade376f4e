//! `vigil` commands run to their end, with an environment that does not leak the caller's.

use std::fmt;
use std::io::Write;
use std::process::{Command, Output, Stdio};

/// The binary under test, without the caller's `RUST_LOG` and `VIGIL_CONFIG` and without
/// colour, so that what it prints is what the test reads.
pub fn vigil_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
    cmd.env_remove("RUST_LOG")
        .env_remove("VIGIL_CONFIG")
        .env("NO_COLOR", "1");
    cmd
}

/// How a finished command ended and what it printed.
pub struct Ran {
    /// Its exit code; -1 if a signal ended it.
    pub code: i32,
    /// Its standard output, then its standard error: what a terminal would show.
    pub out: String,
    /// Its standard output alone (bytes, for output that is not text).
    pub stdout: Vec<u8>,
    /// Its standard error alone.
    pub stderr: String,
}

impl Ran {
    fn from_output(o: Output) -> Ran {
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        Ran {
            code: o.status.code().unwrap_or(-1),
            out: format!("{stdout}{stderr}"),
            stderr,
            stdout: o.stdout,
        }
    }

    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// Its standard output as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// For assertion messages: the exit code and everything printed.
impl fmt::Display for Ran {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit {}\n{}", self.code, self.out)
    }
}

/// Run `cmd` to its end, with nothing on its standard input.
pub fn run(cmd: &mut Command) -> Ran {
    Ran::from_output(cmd.stdin(Stdio::null()).output().expect("run the command"))
}

/// Run `cmd` to its end with `input` on its standard input.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Ran {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    // A command that exits before reading all of it closes the pipe: not the test's failure.
    let _ = pipe.write_all(input);
    drop(pipe);
    Ran::from_output(child.wait_with_output().expect("wait for the command"))
}

/// `vigil ARGS`, run to its end.
pub fn vigil(args: &[&str]) -> Ran {
    run(vigil_command().args(args))
}

/// Run `cmd` to its end and require exit 0 (its stdout and stderr in the failure message);
/// returns its stdout.
pub fn succeed(cmd: &mut Command) -> String {
    let ran = run(cmd.env("NO_COLOR", "1"));
    assert!(ran.ok(), "{ran}");
    ran.stdout_text()
}
