//! A private PostgreSQL server for tests that stop and start it (stopping the shared test
//! server would disturb the other tests), removed when dropped.

use std::path::PathBuf;
use std::process::Command;

pub struct Server {
    _dir: tempfile::TempDir,
    data: PathBuf,
    sock: PathBuf,
    port: u16,
    bin: PathBuf,
    /// More server settings (`-c name=value …`).
    extra: String,
}

impl Server {
    fn pg_ctl(&self, args: &[&str]) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(args)
            .output()
            .expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn new() -> Server {
        Self::with_settings("")
    }

    /// A server started with more settings (`-c name=value …`).
    pub fn with_settings(extra: &str) -> Server {
        let bin = PathBuf::from(std::env::var("GRAVITON_PG_BIN").expect(
            "GRAVITON_PG_BIN is not set: run the tests through scripts/test.sh, which finds PostgreSQL",
        ));
        let dir = tempfile::Builder::new()
            .prefix("graviton-pg")
            .tempdir_in("/var/tmp")
            .unwrap();
        Command::new("chown")
            .arg("postgres:")
            .arg(dir.path())
            .status()
            .unwrap();
        let data = dir.path().join("data");
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // a port nothing uses now (a fixed range could meet a client's ephemeral port)
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let s = Server {
            sock: dir.path().to_path_buf(),
            _dir: dir,
            data,
            port,
            bin,
            extra: extra.to_string(),
        };
        s.start();
        s
    }

    pub fn start(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off {}",
            self.port,
            self.sock.display(),
            self.extra
        );
        let log = self.sock.join("log");
        self.pg_ctl(&["-w", "-l", log.to_str().unwrap(), "-o", &opts, "start"]);
    }

    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
    }

    /// Stops the server as a crash would: its processes quit at once, without writing what
    /// they hold in memory (log records of commits not yet written out are lost).
    pub fn crash(&self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
