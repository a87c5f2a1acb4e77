//! Python tools the tests run (the OpenAPI validator, a grpcio echo server), each in a virtualenv of its own
//! under the target directory, installed from PyPI on first use with pinned versions.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The Python of the virtualenv `name` with `requirements` installed, created on first use.
///
/// Several test processes may get here at once (two `cargo test` runs, or a runner with one process per
/// test): an exclusive lock on a file next to the virtualenv makes one of them build it while the others wait.
/// A marker holding the requirements, written last, says the virtualenv is complete; changing the requirements
/// rebuilds it.
pub fn venv_python(name: &str, requirements: &[&str]) -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("CARGO_TARGET_TMPDIR is inside the target dir");
    let venv = target.join(name);
    let python = if cfg!(windows) { venv.join("Scripts").join("python.exe") } else { venv.join("bin").join("python") };
    let marker = venv.join(".portico-requirements");
    let wanted = requirements.join("\n");
    let ready = || fs::read_to_string(&marker).is_ok_and(|found| found == wanted) && python.exists();
    if ready() {
        return python;
    }

    let lock_path = target.join(format!("{name}.lock"));
    let lock = File::create(&lock_path).unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
    lock.lock().unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    if ready() {
        return python;
    }

    match Command::new("python3").arg("--version").output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!("`python3 --version` failed: {}", String::from_utf8_lossy(&output.stderr)),
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "python3 is not installed, and this test needs it to run {requirements:?} from PyPI. Install Python 3 \
             with its venv module (Debian/Ubuntu: `apt-get install python3 python3-venv`)."
        ),
        Err(e) => panic!("cannot run python3: {e}"),
    }
    if venv.exists() {
        fs::remove_dir_all(&venv).unwrap_or_else(|e| panic!("cannot remove the stale {}: {e}", venv.display()));
    }
    run_checked(Command::new("python3").arg("-m").arg("venv").arg(&venv), &format!("creating the virtualenv {name}"));
    run_checked(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"])
            .args(requirements),
        &format!("installing {requirements:?} from PyPI (this needs network access to pypi.org, or a mirror)"),
    );
    let partial = venv.join(".portico-requirements.partial");
    fs::write(&partial, &wanted).and_then(|()| fs::rename(&partial, &marker)).expect("the marker is written");
    python
}

pub fn run_checked(command: &mut Command, what: &str) -> Output {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({command:?}, {}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
