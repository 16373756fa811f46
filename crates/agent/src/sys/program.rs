//! Running the system's own tools (`nft`, `iptables-legacy-save`) where they are the interface
//! with machine-readable output (SPEC §3): directly, never through a shell, with an empty
//! environment (`LC_ALL=C`), a timeout and a cap on what is read of the output.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The default time a tool may take.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default cap on a tool's standard output.
pub(crate) const DEFAULT_OUTPUT_CAP: usize = 8 * 1024 * 1024;
/// How much of standard error is kept for error messages.
const STDERR_CAP: usize = 4096;

/// Why a tool gave no usable output.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It could not be started.
    #[error("{}: cannot run: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// It ran longer than allowed and was killed.
    #[error("{}: killed after {timeout:?} without finishing", program.display())]
    Timeout {
        /// The program.
        program: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// It wrote more than the cap and was killed.
    #[error("{}: output larger than {cap} bytes; killed", program.display())]
    TooMuchOutput {
        /// The program.
        program: PathBuf,
        /// The cap, in bytes.
        cap: usize,
    },
    /// It exited unsuccessfully.
    #[error("{}: exited with {status}: {stderr}", program.display())]
    Failed {
        /// The program.
        program: PathBuf,
        /// How it ended (`exit status: 1`, `signal: 9`).
        status: String,
        /// The start of its standard error, lossily.
        stderr: String,
    },
    /// Waiting for it or reading its output failed.
    #[error("{}: {source}", program.display())]
    Io {
        /// The program.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The first of `candidates` that exists as a file (tools are looked up at fixed system paths,
/// not through `PATH`, since the agent runs with privilege).
pub(crate) fn find_tool(candidates: &[&str]) -> Option<PathBuf> {
    candidates
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf)
}

/// Reads at most `cap + 1` bytes of `r` (so the caller can tell "more than cap").
fn read_capped(r: impl Read, cap: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(cap as u64 + 1).read_to_end(&mut out)?;
    Ok(out)
}

/// Runs `program args`, returns its standard output when it exits with 0 within `timeout`
/// having written at most `cap` bytes. A tool that writes more is killed at once.
pub fn run(program: &Path, args: &[&str], timeout: Duration, cap: usize) -> Result<Vec<u8>, RunError> {
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("LC_ALL", "C")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    // Readers run on their own threads so a tool that fills one pipe cannot stall the other,
    // and this thread is free to enforce the deadline and the cap.
    let out_reader = std::thread::spawn(move || match stdout {
        Some(s) => read_capped(s, cap),
        None => Ok(Vec::new()),
    });
    let err_reader = std::thread::spawn(move || match stderr {
        Some(s) => read_capped(s, STDERR_CAP),
        None => Ok(Vec::new()),
    });
    let deadline = Instant::now() + timeout;
    let io_err = |source| RunError::Io {
        program: program.to_path_buf(),
        source,
    };
    let mut out_handle = Some(out_reader);
    let mut out: Option<Vec<u8>> = None;
    let mut status = None;
    // Wait until the tool has exited and both pipes are read; kill it at the deadline, or as
    // soon as its output goes over the cap (the stdout reader then stops early).
    loop {
        if status.is_none() {
            status = child.try_wait().map_err(io_err)?;
        }
        if let Some(handle) = out_handle.take_if(|h| h.is_finished()) {
            let bytes = handle
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("output reader failed")))
                .map_err(io_err)?;
            if bytes.len() > cap {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::TooMuchOutput {
                    program: program.to_path_buf(),
                    cap,
                });
            }
            out = Some(bytes);
        }
        if status.is_some() && out.is_some() && err_reader.is_finished() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            // The reader threads end when the pipes close; a grandchild holding them open
            // would keep them alive, detached, without blocking us.
            return Err(RunError::Timeout {
                program: program.to_path_buf(),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let err = err_reader.join().ok().and_then(Result::ok).unwrap_or_default();
    let (Some(status), Some(out)) = (status, out) else {
        return Err(io_err(std::io::Error::other("lost track of the tool")));
    };
    if !status.success() {
        let mut stderr = String::from_utf8_lossy(&err[..err.len().min(STDERR_CAP)])
            .trim()
            .to_owned();
        if stderr.is_empty() {
            stderr = "(no error output)".to_owned();
        }
        return Err(RunError::Failed {
            program: program.to_path_buf(),
            status: status.to_string(),
            stderr,
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_captures() {
        let Some(echo) = find_tool(&["/bin/echo", "/usr/bin/echo"]) else {
            return;
        };
        assert_eq!(run(&echo, &["hi"], DEFAULT_TIMEOUT, 100).unwrap(), b"hi\n");
        assert!(matches!(
            run(&echo, &["hello world"], DEFAULT_TIMEOUT, 4),
            Err(RunError::TooMuchOutput { .. })
        ));
    }

    #[test]
    fn times_out_and_reports_failures() {
        if let Some(sleep) = find_tool(&["/bin/sleep", "/usr/bin/sleep"]) {
            let started = Instant::now();
            let r = run(&sleep, &["10"], Duration::from_millis(200), 100);
            assert!(matches!(r, Err(RunError::Timeout { .. })), "{r:?}");
            assert!(started.elapsed() < Duration::from_secs(5));
        }
        if let Some(f) = find_tool(&["/bin/false", "/usr/bin/false"]) {
            assert!(matches!(
                run(&f, &[], DEFAULT_TIMEOUT, 100),
                Err(RunError::Failed { .. })
            ));
        }
        assert!(matches!(
            run(Path::new("/nonexistent/tool"), &[], DEFAULT_TIMEOUT, 100),
            Err(RunError::Spawn { .. })
        ));
    }
}
