//! A log segment file of arbitrary bytes: opening (recovery) and reading are errors or
//! truncations, never panics or allocations sized by an unchecked length.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{:020}.log", 1)), data).unwrap();
    if let Ok(log) = flotilla_log::Log::open(dir.path(), flotilla_log::LogConfig::default(), 0) {
        let last = log.stats().last_lsn;
        let _ = log.read(1, 1000, 1 << 20);
        let _ = last;
    }
});
