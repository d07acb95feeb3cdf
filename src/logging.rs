//! Logging to stderr through env_logger, limited to wxtoken's own records.

use log::{LevelFilter, Log, Metadata, Record};

/// Only wxtoken's own log records pass. Libraries below us may log request URLs at debug
/// or trace level (ureq does), and the classic endpoint's URL holds the secret; no
/// `RUST_LOG` directive can turn that back on.
struct OwnRecordsOnly(env_logger::Logger);

impl Log for OwnRecordsOnly {
    fn enabled(&self, metadata: &Metadata) -> bool {
        is_own(metadata.target()) && self.0.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if is_own(record.target()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

fn is_own(target: &str) -> bool {
    target == "wxtoken" || target.starts_with("wxtoken::")
}

/// Default level warn; -v info, -vv debug, -vvv trace; -q error. `RUST_LOG` refines it.
pub fn init(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => LevelFilter::Error,
        (false, 0) => LevelFilter::Warn,
        (false, 1) => LevelFilter::Info,
        (false, 2) => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level).format_timestamp_secs();
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    let logger = builder.build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(OwnRecordsOnly(logger))).is_ok() {
        log::set_max_level(max);
    }
}
