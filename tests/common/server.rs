//! Starting the real `potok` binary for the server tests: free ports, a given data directory,
//! and the listen addresses read from its first two lines of output.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `potok serve` and where it listens.
pub struct Spawned {
    pub child: Child,
    pub resp: String,
    pub amqp: String,
}

/// Start `potok serve` on free RESP and AMQP ports with `data_dir` and `extra` flags. `Err`
/// carries the server's stderr if it exits before listening (a refused configuration).
pub fn spawn_server(data_dir: &Path, extra: &[&str]) -> Result<Spawned, String> {
    spawn_server_env(data_dir, extra, &[])
}

/// [`spawn_server`] with extra environment variables (failpoints).
pub fn spawn_server_env(
    data_dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Spawned, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_potok"))
        .envs(env.iter().copied())
        .args([
            "serve",
            "--resp-addr",
            "127.0.0.1:0",
            "--amqp-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start potok");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let (mut resp, mut amqp) = (None, None);
    while resp.is_none() || amqp.is_none() {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap_or(0) == 0 {
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut stderr);
            }
            let _ = child.wait();
            return Err(stderr);
        }
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("potok: RESP listening on ") {
            resp = Some(addr.to_string());
        } else if let Some(addr) = line.strip_prefix("potok: AMQP listening on ") {
            amqp = Some(addr.to_string());
        }
    }
    Ok(Spawned {
        child,
        resp: resp.unwrap_or_default(),
        amqp: amqp.unwrap_or_default(),
    })
}
