//! wxtoken: the one place that fetches WeChat access tokens; everything else reads them.

/// Diagnostics never end a run: std's `eprintln!` panics when stderr is closed or its
/// reader is gone (EPIPE), and with `panic = "abort"` that is SIGABRT, with no summary and
/// no metrics file. This one, which every module below sees in place of std's, writes and
/// ignores the error: a message nobody can read is no reason to stop.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod atomicfile;
mod cli;
mod cmd;
mod config;
mod crypto;
mod domain;
mod engine;
mod exit;
mod freshness;
mod keyfile;
mod keys;
mod logging;
mod metrics;
mod policy;
mod process;
mod publish;
mod push;
mod quota;
mod secret;
mod signals;
mod sink;
mod store;
mod text;
mod vault;
mod wechat;

use std::process::ExitCode;

use exit::Exit;

fn main() -> ExitCode {
    // `status --check` is a monitoring plugin: every failure is UNKNOWN, even bad arguments.
    let check = cmd::check::wanted(&std::env::args_os().collect::<Vec<_>>());
    let cli = match cli::Cli::parse_args() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version: clap prints them on stdout.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            let line = cli::usage_error_line(&err);
            if check {
                return ExitCode::from(cmd::check::print_unknown(&line));
            }
            eprintln!("wxtoken: error: {line} (see wxtoken --help)");
            return ExitCode::from(Exit::Usage.code());
        }
    };
    logging::init(cli.global.verbose, cli.global.quiet);
    match config::Config::from_cli(cli).and_then(cmd::run) {
        Ok(exit) => ExitCode::from(exit.code()),
        // A monitoring plugin reports even bad arguments as UNKNOWN, on stdout.
        Err(err) if check => ExitCode::from(cmd::check::print_unknown(&format!("{err:#}"))),
        Err(err) => {
            eprintln!("wxtoken: error: {err:#}");
            ExitCode::from(exit::of(&err).code())
        }
    }
}
