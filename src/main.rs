//! wxtoken: the one place that fetches WeChat access tokens; everything else reads them.

mod cli;
mod cmd;
mod exit;
mod logging;
mod metrics;
mod policy;
mod secret;
mod store;
mod wechat;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version: clap prints them on stdout.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            let line = cli::usage_error_line(&err);
            if cmd::check::wanted(&std::env::args_os().collect::<Vec<_>>()) {
                // A monitoring plugin reports bad arguments as UNKNOWN, on stdout.
                println!("{}", cmd::check::unknown(&line).1);
                return ExitCode::from(cmd::check::State::Unknown as u8);
            }
            eprintln!("wxtoken: error: {line} (see wxtoken --help)");
            return ExitCode::from(exit::USAGE);
        }
    };
    logging::init(cli.verbose, cli.quiet);
    match cmd::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("wxtoken: error: {err:#}");
            ExitCode::from(exit::code_of(&err))
        }
    }
}
