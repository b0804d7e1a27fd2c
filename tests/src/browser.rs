//! A real browser for the job page's tests and benchmark: Debian's Chromium, headless, driven
//! over W3C WebDriver by Debian's `chromedriver`, with a lean client here (JSON over HTTP/1.1 on
//! loopback, one connection per command; no WebDriver crate, no browser download). Also
//! [`CutProxy`], a loopback TCP proxy that can drop every connection through it, to test what a
//! page does when its live connection breaks.
//!
//! Invariants: Chromium runs with a fresh profile in a temporary directory and the flags this
//! machine needs (`--no-sandbox` as root, no background networking: every connection but the
//! page's own is refused here); everything stays on loopback; dropping a [`Browser`] ends the
//! session and kills the driver (and so the browser).

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Chromium's binary (`SDCI_CHROMIUM` overrides).
pub fn chromium_path() -> PathBuf {
    std::env::var_os("SDCI_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// chromedriver's binary (`SDCI_CHROMEDRIVER` overrides).
pub fn chromedriver_path() -> PathBuf {
    std::env::var_os("SDCI_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"))
}

/// Why there is no browser here, if there is none (scripts/install-deps installs one).
pub fn missing() -> Option<String> {
    for p in [chromium_path(), chromedriver_path()] {
        if !p.is_file() {
            return Some(format!(
                "{} is missing: run scripts/install-deps (Debian's chromium and chromium-driver)",
                p.display()
            ));
        }
    }
    None
}

/// The flags headless Chromium needs on this machine.
const FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--mute-audio",
];

/// One HTTP/1.1 exchange with chromedriver: (status, body), the body read by its length.
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let (split, len) = loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            bail!("chromedriver closed the connection before answering");
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..i]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            break (i + 4, len);
        }
    };
    match len {
        Some(len) => {
            while raw.len() < split + len {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            s.read_to_end(&mut raw)?;
        }
    }
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("malformed status line: {head}"))?;
    Ok((code, String::from_utf8_lossy(&raw[split..]).into_owned()))
}

/// One headless Chromium with one WebDriver session.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

fn free_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("find a free loopback port")?;
    Ok(l.local_addr()?)
}

impl Browser {
    /// Starts chromedriver and a browser session with a `width`×`height` window.
    pub fn start(width: u32, height: u32) -> Result<Self> {
        if let Some(why) = missing() {
            bail!(why);
        }
        let addr = free_addr()?;
        let driver = Command::new(chromedriver_path())
            .arg(format!("--port={}", addr.port()))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start chromedriver")?;
        let profile = tempfile::Builder::new()
            .prefix("sdci-chromium-")
            .tempdir()?;
        let mut b = Self {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, body)) = http(addr, "GET", "/status", b"") {
                if body.contains("\"ready\":true") {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not become ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut args: Vec<String> = FLAGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!("--window-size={width},{height}"));
        args.push(format!("--user-data-dir={}", b._profile.path().display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {"binary": chromium_path(), "args": args},
        }}});
        let v = b.call("POST", "/session", &caps)?;
        b.session = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session id in {v}"))?
            .to_owned();
        Ok(b)
    }

    fn call(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        let data = if method == "GET" || method == "DELETE" {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let (code, text) = http(self.addr, method, path, &data)
            .with_context(|| format!("WebDriver {method} {path}"))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("WebDriver {method} {path} answered {code}: {text}"))?;
        if code != 200 {
            bail!("WebDriver {method} {path}: {code} {}", v["value"]);
        }
        Ok(v["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Loads `url` and waits for the page's load event.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.session_call("POST", "/url", &json!({ "url": url }))
            .map(drop)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its return value.
    pub fn exec(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.session_call(
            "POST",
            "/execute/sync",
            &json!({ "script": script, "args": args }),
        )
    }

    /// Waits until `script` returns true (safety net: `limit`).
    pub fn wait_for(&self, what: &str, script: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.exec(script, &[])?.as_bool() == Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the page did not get to {what} within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes a PNG screenshot of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        use base64::Engine as _;
        let v = self.session_call("GET", "/screenshot", &Value::Null)?;
        let b64 = v.as_str().ok_or_else(|| anyhow!("no screenshot data"))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("decode the screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }

    /// The page's current URL.
    pub fn url(&self) -> Result<String> {
        Ok(self
            .session_call("GET", "/url", &Value::Null)?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call(
                "DELETE",
                &format!("/session/{}", self.session),
                &Value::Null,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A loopback TCP proxy to `target` whose connections can all be cut at once.
pub struct CutProxy {
    pub addr: SocketAddr,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl CutProxy {
    pub fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (o, s) = (open.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let pairs = [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ];
                if let Ok(mut list) = o.lock() {
                    list.retain(|c| c.peer_addr().is_ok());
                    if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
                        list.push(a);
                        list.push(b);
                    }
                }
                for pair in pairs {
                    if let (Ok(mut from), Ok(mut to)) = pair {
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 16 * 1024];
                            loop {
                                match from.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        if to.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            }
        });
        Ok(Self { addr, open, stop })
    }

    /// Drops every connection open through the proxy now (new ones are accepted).
    pub fn cut_all(&self) -> usize {
        let mut list = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = list.len() / 2;
        for c in list.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        n
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        self.cut_all();
    }
}

/// The resident set of process `pid` now and at its peak (`VmRSS`, `VmHWM`), in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) of process `pid` so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The pid of the `sdci-host serve` started with configuration `config`.
pub fn host_pid(config: &Path) -> Option<u32> {
    let want = config.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("sdci-host"))
            && args.contains(&want)
            && args.iter().any(|a| a == "serve")
        {
            return Some(pid);
        }
    }
    None
}
