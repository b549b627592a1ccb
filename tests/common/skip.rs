//! One helper, included by the integration tests (`tests/common`) and by the crate's own unit
//! tests (`util::skip`), so a skipped check reads the same wherever it is made.

/// A check this machine cannot make: said on stderr (which the test harness shows for failing
/// tests only) and, where `MODELYARD_SKIP_LOG` names a file (`.ci/run` sets it and prints the
/// file at the end), appended there with the test binary's and the test's name.
pub fn skip(notice: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("?").to_string();
    eprintln!("NOTICE ({test}): {notice}");
    if let Some(log) = std::env::var_os("MODELYARD_SKIP_LOG") {
        let line = format!("{}: {test}: {notice}\n", env!("CARGO_CRATE_NAME"));
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        assert!(appended.is_ok(), "MODELYARD_SKIP_LOG: {appended:?}");
    }
}
