//! Unmodified redis-py against the real server (tests/redis_py_smoke.py). `.ci/run` installs
//! redis-py and sets POTOK_REQUIRE_REDIS_PY=1, so there a missing redis-py is a failure; on a
//! machine without it the test says so and passes.

use std::process::Command;

mod common;

fn redis_py_available() -> bool {
    Command::new("python3")
        .args(["-c", "import redis"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn redis_py_works_unmodified_over_resp2_and_resp3() {
    if !redis_py_available() {
        assert!(
            std::env::var("POTOK_REQUIRE_REDIS_PY").is_err(),
            "redis-py is required here but missing"
        );
        eprintln!("redis-py is not installed; skipping (pip install redis)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spawned = common::server::spawn_server(dir.path(), &[]).expect("server starts");
    let mut server = spawned.child;
    let port = spawned.resp.rsplit(':').next().unwrap().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/redis_py_smoke.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(&port)
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        output.status.success(),
        "redis-py smoke failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("RESP2: ok") && stdout.contains("RESP3: ok"),
        "{stdout}"
    );
}
