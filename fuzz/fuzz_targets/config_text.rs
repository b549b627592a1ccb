//! config.pbtxt text → parse, normalise, validate, print back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use modelyard::config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(mut c) = config::ModelConfig::from_pbtxt(&text) {
        config::normalize(&mut c);
        let _ = config::validate_model_config(&c);
        let _ = config::validate_io_config(&c);
        config::normalize_instance_groups(&mut c, 0);
        let _ = config::validate_instance_groups(&c, false, 0);
        let printed = c.to_pbtxt();
        // What we print, we must read back.
        assert!(config::ModelConfig::from_pbtxt(&printed).is_ok(), "{printed}");
    }
});
