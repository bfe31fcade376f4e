//! `vigil serve` as a child process, stopped (SIGTERM, kill -9) by the test and always on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::broker::Broker;
use super::cli::vigil_command;
use super::free_port;

/// `vigil serve` as a child process.
pub struct Serve {
    pub child: Child,
    pub log: PathBuf,
    /// The analyst API's address (a free loopback port unless `--listen` was given).
    pub api: String,
}

pub fn serve(
    broker: &Broker,
    topics: &str,
    data_dir: &Path,
    group: &str,
    extra_env: &[(&str, &str)],
    config: Option<&Path>,
) -> Serve {
    serve_with(broker, topics, data_dir, group, extra_env, config, &[])
}

/// [`serve`] with more command-line arguments.
pub fn serve_with(
    broker: &Broker,
    topics: &str,
    data_dir: &Path,
    group: &str,
    extra_env: &[(&str, &str)],
    config: Option<&Path>,
    extra_args: &[&str],
) -> Serve {
    let log = data_dir.with_extension(format!("serve-{}.log", free_port()));
    let f = std::fs::File::create(&log).unwrap();
    let mut cmd = vigil_command();
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.args([
        "serve",
        "--brokers",
        &broker.addr,
        "--topics",
        topics,
        "--group-id",
        group,
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .args(["--progress-secs", "1"])
    .args(extra_args)
    .env_remove("RUST_LOG")
    .env("NO_COLOR", "1")
    .env("VIGIL_STORE__MAX_BATCH_WAIT_MS", "200")
    .stdout(f.try_clone().unwrap())
    .stderr(f)
    .stdin(Stdio::null());
    let api = match extra_args.iter().position(|a| *a == "--listen") {
        Some(i) => extra_args[i + 1].to_owned(),
        None => {
            let a = format!("127.0.0.1:{}", free_port());
            cmd.args(["--listen", &a]);
            a
        }
    };
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Serve {
        child: cmd.spawn().expect("start vigil serve"),
        log,
        api,
    }
}

impl Serve {
    /// SIGTERM and wait (bounded); returns whether it exited 0.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id() as i32;
        unsafe_kill(pid, 15);
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.success();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "vigil serve did not stop after SIGTERM; log: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Serve::terminate`], and the whole log it wrote (its shutdown summary included).
    pub fn stop(self) -> (bool, String) {
        let log = self.log.clone();
        let ok = self.terminate();
        (ok, std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// kill -9.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn unsafe_kill(pid: i32, sig: i32) {
    // `kill` the command, to avoid a libc dependency for one call.
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
