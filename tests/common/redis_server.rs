//! A real `redis-server` per test, on a free loopback port, in a temporary directory, with
//! persistence off; killed when dropped. When the binary is missing and the tests run as root
//! with apt (CI, a fresh machine), it is installed once, as `.ci/run` does.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
};

/// A running `redis-server`.
pub struct Redis {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    password: Option<String>,
    /// TLS only (`rediss://`): certificate, key and CA PEM files.
    tls: Option<[PathBuf; 3]>,
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-server`, installed through apt if it is missing (needs root).
pub fn redis_server() -> PathBuf {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let on_path = || {
                Command::new("sh")
                    .args(["-c", "command -v redis-server"])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            };
            if let Some(p) = on_path() {
                return p;
            }
            let installed = Command::new("sh")
                .args([
                    "-c",
                    "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server",
                ])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                installed,
                "these tests need redis-server; install it (Debian: apt-get install redis-server)"
            );
            on_path().expect("redis-server on PATH after installing it")
        })
        .clone()
}

impl Redis {
    /// A fresh server without a password.
    pub fn start() -> Redis {
        Redis::start_with(None)
    }

    /// A fresh server that requires `password` (AUTH).
    pub fn start_with(password: Option<&str>) -> Redis {
        Redis::start_full(password, None)
    }

    /// A server that speaks only TLS (`rediss://`), with `cert`, `key` and `ca` PEM files,
    /// clients not asked for certificates; and AUTH with `password` if given.
    pub fn start_tls(password: Option<&str>, tls: [PathBuf; 3]) -> Redis {
        Redis::start_full(password, Some(tls))
    }

    fn start_full(password: Option<&str>, tls: Option<[PathBuf; 3]>) -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut redis = Redis {
            child: None,
            port: 0,
            dir,
            password: password.map(str::to_owned),
            tls,
        };
        // A port found free can be taken before the server binds it: try a few.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            redis.port = port;
            if redis.launch() {
                return redis;
            }
        }
        panic!("redis-server did not start on a free port");
    }

    /// Starts the server on its port; `false` when it exited first (port taken).
    fn launch(&mut self) -> bool {
        let mut cmd = Command::new(redis_server());
        match &self.tls {
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
            Some([cert, key, ca]) => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .arg("--tls-ca-cert-file")
                    .arg(ca)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--loglevel", "notice"]);
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        // It says so on stdout once it accepts connections; EOF means it exited.
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("Ready to accept connections"));
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
        true
    }

    /// Its URL (without credentials).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): the gateways lose it mid-run.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server without closing its connections (SIGSTOP): a Redis that hangs.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("redis-server running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    /// Starts it again on the same port, empty (persistence is off).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.launch(), "redis-server restarts on port {}", self.port);
    }

    /// A direct connection, to look at what the gateways wrote.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let url = match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", self.port),
            None => self.url(),
        };
        redis::Client::open(url)
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }
}
