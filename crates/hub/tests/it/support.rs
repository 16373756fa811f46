//! Test support: scratch directories, a real `twinguard-hub serve` process (its addresses read
//! from `listen.json`), API helpers, polling, and the skip rule (a test whose environment is
//! missing prints why and passes, except under CI=true, where it fails).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use twinguard_hub::http::call;

/// The module the agent uses.
pub const MODULE: &str = "azureiotsecurity";
/// The configuration object's key in the twin.
pub use twinguard_core::config::CONFIG_KEY;

/// Whether this run is CI's (where nothing may be skipped).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips a test whose environment is missing: prints the reason, or fails under CI=true.
pub fn skip(reason: &str) {
    use std::io::Write;
    assert!(!ci(), "CI=true and this test cannot run: {reason}");
    let test = std::thread::current().name().unwrap_or("hub").to_owned();
    eprintln!("SKIPPED {test}: {reason}");
    // Summarised by scripts/test after the run (cargo hides the output of passing tests).
    let log = target_dir().join("test-skips.log");
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = file.write_all(format!("twinguard-hub\t{test}\t{reason}\n").as_bytes());
    }
}

/// `target/` of the workspace.
/// Held for the whole of a test whose real agent watches the whole machine and whose checks
/// include a near miss (no alert for X): such tests would see each other's programs, logins
/// and firewall changes, so they run one at a time.
pub fn machine_wide() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn target_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().map(Path::to_path_buf).unwrap_or(tmp)
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh, empty directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("hub-it")
        .join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Polls `check` every 50 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running hub process; killed when dropped.
#[derive(Debug)]
pub struct Hub {
    child: Option<Child>,
    /// MQTT over TLS.
    pub mqtt: SocketAddr,
    /// The API.
    pub api: SocketAddr,
    /// The service API (HTTPS).
    pub service: Option<SocketAddr>,
    /// The CA certificate.
    pub ca: PathBuf,
    /// Its log (stderr).
    pub log: PathBuf,
    /// The API token (from `DIR/api-token`).
    pub token: String,
    /// The process id.
    pub pid: u32,
}

impl Hub {
    /// Starts a hub on `listen` (port 0 for any) with a fresh or existing data directory.
    /// `Err` when it did not come up (e.g. the port is taken), with its log.
    pub fn start(data_dir: &Path, listen: &str) -> Result<Hub, String> {
        Hub::start_with(data_dir, listen, &[])
    }

    /// [`Hub::start`] with more `serve` arguments.
    pub fn start_with(data_dir: &Path, listen: &str, extra: &[&str]) -> Result<Hub, String> {
        let listen_file = data_dir.join("listen.json");
        let _ = std::fs::remove_file(&listen_file);
        let log = data_dir.with_extension(format!("hub-{}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| e.to_string())?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_twinguard-hub"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--listen", listen, "--api", "127.0.0.1:0", "--verbose"])
            // The service API on any free port, unless the test says where (or none).
            .args(
                if extra.iter().any(|a| *a == "--service" || *a == "--no-service") {
                    &[][..]
                } else {
                    &["--service", "127.0.0.1:0"][..]
                },
            )
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut status = None;
        let up = wait_until(Duration::from_secs(20), || {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            status = std::fs::read(&listen_file)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .filter(|v| v["pid"] == json!(child.id()));
            status.is_some()
        });
        let Some(status) = status.filter(|_| up) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the hub did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        };
        let addr = |name: &str| -> SocketAddr {
            status[name]
                .as_str()
                .and_then(|a| a.parse().ok())
                .expect("address in listen.json")
        };
        let token = std::fs::read_to_string(data_dir.join("api-token"))
            .map_err(|e| format!("reading the API token: {e}"))?
            .trim()
            .to_owned();
        Ok(Hub {
            token,
            pid: child.id(),
            mqtt: addr("mqtt"),
            api: addr("api"),
            service: status["service"].as_str().and_then(|a| a.parse().ok()),
            ca: PathBuf::from(status["caFile"].as_str().expect("caFile")),
            child: Some(child),
            log,
        })
    }

    /// Kills the hub (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One API call.
    pub fn api(&self, method: &str, target: &str, body: Option<&Value>) -> (u16, Value) {
        call(
            self.api,
            &self.token,
            method,
            target,
            body,
            Duration::from_secs(40),
        )
        .expect("API call")
    }

    /// Creates an identity and returns its connection string.
    pub fn add_identity(&self, device: &str, module: Option<&str>) -> String {
        let (status, created) = self.api(
            "POST",
            "/v1/identities",
            Some(&json!({"deviceId": device, "moduleId": module})),
        );
        assert_eq!(status, 201, "{created}");
        created["connectionString"]
            .as_str()
            .expect("connection string")
            .to_owned()
    }

    /// The twin's `properties` (`{"desired", "reported"}`).
    pub fn twin(&self, device: &str, module: &str) -> Value {
        let (status, twin) = self.api("GET", &format!("/v1/twins/{device}/modules/{module}"), None);
        assert_eq!(status, 200, "{twin}");
        twin["properties"].clone()
    }

    /// Changes desired properties (`PUT` replaces, `PATCH` merges).
    pub fn desired(&self, method: &str, device: &str, module: &str, doc: &Value) -> Value {
        let (status, twin) = self.api(
            method,
            &format!("/v1/twins/{device}/modules/{module}/desired"),
            Some(doc),
        );
        assert_eq!(status, 200, "{twin}");
        twin
    }

    /// Every stored message of a device, oldest first.
    pub fn messages(&self, device: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let (status, page) = self.api(
                "GET",
                &format!("/v1/messages?device={device}&after={after}"),
                None,
            );
            assert_eq!(status, 200, "{page}");
            let list = page["messages"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                return all;
            }
            after = page["next"].as_i64().expect("next");
            all.extend(list);
        }
    }

    /// The hub's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a secret file (mode 0600), as the agent requires for a connection string.
pub fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// The key of a connection string.
pub fn key_of(connection_string: &str) -> Vec<u8> {
    use base64::Engine as _;
    let key = connection_string
        .trim()
        .split(';')
        .find_map(|p| p.strip_prefix("SharedAccessKey="))
        .expect("key");
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .expect("base64")
}
