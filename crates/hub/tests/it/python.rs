//! The Python environment for the tests that use outside clients and checkers: a virtual
//! environment under `target/hub-sdk-venv` with Microsoft's `azure-iot-device` SDK, its
//! service SDK `azure-iot-hub` (which needs `six` without declaring it), and the schema
//! checker's packages (`jsonschema`, `rfc3339-validator`), and `selenium` for the web console's
//! browser test (it drives Debian's `chromium` through `chromium-driver`). Created once per run (a
//! fresh Debian's system pip refuses installs, hence the venv; Debian needs `python3-venv`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::support::target_dir;

/// The pinned SDK version the tests were written against.
pub const SDK: &str = "azure-iot-device==2.14.0";
/// The pinned service SDK version.
pub const SERVICE_SDK: &str = "azure-iot-hub==2.7.0";
/// The pinned Selenium version the browser test was written against.
pub const SELENIUM: &str = "selenium==4.27.1";

/// The venv's python with the packages installed, or why there is none.
pub fn venv_python() -> Result<PathBuf, String> {
    static RESULT: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);
    let mut result = RESULT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    result.get_or_insert_with(create).clone()
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn create() -> Result<PathBuf, String> {
    let dir = target_dir().join("hub-sdk-venv");
    let python = dir.join("bin").join("python");
    if !python.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&dir)).map_err(|e| {
            format!("cannot create a Python venv (Debian: apt-get install python3-venv): {e}")
        })?;
    }
    let ready = Command::new(&python)
        .args([
            "-c",
            "import azure.iot.device, azure.iot.hub, six, jsonschema, rfc3339_validator, selenium",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--timeout",
            "60",
            SDK,
            SERVICE_SDK,
            "six",
            "jsonschema",
            "rfc3339-validator",
            SELENIUM,
        ]))
        .map_err(|e| format!("cannot install {SDK}, {SERVICE_SDK} and {SELENIUM} from PyPI: {e}"))?;
    }
    Ok(python)
}
