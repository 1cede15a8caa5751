//! The real binary.

use super::*;

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tokengate-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the `tokengate` binary to its end with `args`, a clean environment
/// plus `env`, and no stdin: exit code, stdout, stderr.
pub async fn run_bin(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("cannot run the tokengate binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `tokengate` binary, started with `--config FILE`, a clean environment and
/// `RUST_LOG=info`; every stdout/stderr line is collected.
pub struct Binary {
    child: Option<std::process::Child>,
    lines: Arc<Mutex<Vec<String>>>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Binary {
    /// Starts it and waits for the JSON "tokengate started" line (the config
    /// must set `[log] format = "json"`), which carries the bound addresses.
    pub async fn start(config: &std::path::Path) -> Self {
        Self::start_with(config, false).await
    }

    /// Like [`Binary::start`], confined to CPU 0 with `taskset` when `one_cpu`.
    pub async fn start_with(config: &std::path::Path, one_cpu: bool) -> Self {
        use std::io::BufRead;
        let mut command = if one_cpu {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", "0", env!("CARGO_BIN_EXE_tokengate")]);
            c
        } else {
            std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        };
        let mut child = command
            .arg("--config")
            .arg(config)
            .env_clear()
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start the tokengate binary");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for pipe in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut bin = Self {
            child: Some(child),
            lines,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
        };
        let started = bin
            .wait_for_line(0, |l| l.contains("tokengate started"))
            .await;
        let v: Value = serde_json::from_str(&started).expect("started line is JSON");
        bin.addr = v["listen"].as_str().unwrap().parse().unwrap();
        bin.admin = v["admin"].as_str().unwrap().parse().unwrap();
        bin
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits (up to 20 s) for a line at index >= `from` that satisfies `pred`.
    pub async fn wait_for_line(&self, from: usize, pred: impl Fn(&str) -> bool) -> String {
        for _ in 0..1000 {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .skip(from)
                .find(|l| pred(l))
            {
                return l.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "expected log line not printed within 20s; output:\n{}",
            self.output()
        );
    }

    /// Sends a signal by name ("TERM", "HUP") with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("kill(1) is missing");
        assert!(status.success(), "kill -{sig} {pid} failed");
    }

    /// Waits (up to 20 s) for the process to exit.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        for _ in 0..1000 {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "tokengate did not exit within 20s; output:\n{}",
            self.output()
        );
    }

    /// Waits for the exit and requires status 0.
    pub async fn wait_exit_0(&mut self) {
        let status = self.wait_exit().await;
        assert_eq!(
            status.code(),
            Some(0),
            "exit status; output:\n{}",
            self.output()
        );
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // A failed test must not leave the process behind.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
