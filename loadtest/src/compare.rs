//! Reference servers for comparisons: stock `redis-server`, in memory and with
//! `appendfsync always`, started on free loopback ports and stopped afterwards.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running `redis-server`, killed on drop.
pub struct RedisServer {
    child: Child,
    /// Its address.
    pub addr: SocketAddr,
    /// Label for reports.
    pub label: String,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisServer {
    /// Starts `redis-server` on a free port; `fsync_always` turns on the AOF with
    /// `appendfsync always` in `dir`.
    pub fn start(dir: &Path, fsync_always: bool) -> Result<RedisServer> {
        let port = free_port()?;
        let work: PathBuf = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&work)?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(&work);
        if fsync_always {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not start on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let label = if fsync_always {
            "redis-server (fsync always)"
        } else {
            "redis-server (in memory)"
        };
        Ok(RedisServer {
            child,
            addr,
            label: label.to_string(),
        })
    }
}
