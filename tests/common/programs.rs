//! External programs.

/// Call when a test cannot find an external program it needs. Outside CI it
/// writes one loud line straight to the process's stderr (libtest captures
/// `eprintln!` of a passing test, so that would never be seen) and the test
/// returns; under `CI` (set by .ci/run) a missing program fails the test.
pub fn skip_for_missing(test: &str, missing: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "!!!!! SKIPPED {test}: needs {missing}; .ci/run installs it, and under CI a missing program fails the test"
    );
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI must have {missing}"
    );
}

/// The running test's name (libtest names each test's thread after it).
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned()
}

/// Whether an executable `name` is on the `PATH`.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// `python3` if it can import every module in `modules`, else `None`.
pub fn python_with(modules: &[&str]) -> Option<std::path::PathBuf> {
    let python = std::path::PathBuf::from("python3");
    let code = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let ok = std::process::Command::new(&python)
        .args(["-c", &code])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}
