//! Runs the WeChat API stand-in as a process, for demos and benchmarks.
//!
//! Usage: standin [--port N] [--latency-ms N] [--exit-on-stdin-eof]
//! Prints its base URL on one line, then serves until killed.

use wxtoken_standin as standin;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: standin [--port N] [--latency-ms N] [--exit-on-stdin-eof]";

fn main() -> ExitCode {
    let (port, latency_ms, exit_on_eof) = match parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("standin: {e}; {USAGE}");
            return ExitCode::from(2);
        }
    };

    let server = match standin::StandIn::bind(port) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("standin: could not bind 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    server.set_latency(Duration::from_millis(latency_ms));
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "{}", server.url())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }

    if exit_on_eof {
        // Read (and ignore) stdin until the parent closes it.
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        server.shutdown();
        return ExitCode::SUCCESS;
    }
    loop {
        std::thread::park();
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(u16, u64, bool), String> {
    let (mut port, mut latency_ms, mut exit_on_eof) = (0u16, 0u64, false);
    while let Some(arg) = args.next() {
        let mut number = || {
            let v = args.next().unwrap_or_default();
            v.parse::<u64>()
                .map_err(|_| format!("{arg} needs a number, got {v:?}"))
        };
        match arg.as_str() {
            "--port" => {
                let n = number()?;
                port = u16::try_from(n).map_err(|_| format!("--port out of range: {n}"))?;
            }
            "--latency-ms" => latency_ms = number()?,
            "--exit-on-stdin-eof" => exit_on_eof = true,
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok((port, latency_ms, exit_on_eof))
}
