//! Runs the WeChat API stand-in as a process, for demos and benchmarks.
//!
//! Usage: standin [--port N] [--latency-ms N] [--exit-on-stdin-eof] [--demo-platforms]
//! Prints its base URL on one line, then serves until killed.
//!
//! `--demo-platforms` adds a demo Open Platform component and WeCom suite (see
//! [`demo_platforms`]) with tickets that stay valid: the virtual clock never moves here.

use wxtoken_standin as standin;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str =
    "usage: standin [--port N] [--latency-ms N] [--exit-on-stdin-eof] [--demo-platforms]";

fn main() -> ExitCode {
    let Args {
        port,
        latency_ms,
        exit_on_eof,
        demo,
    } = match parse_args(std::env::args().skip(1)) {
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
    if demo {
        demo_platforms(&server);
    }
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

/// Component `wx0demo0component` (secret `demo-component-secret`, ticket `demo-ticket`) with
/// authorizer `wx0demo0authorizer` (refresh token `demo-refresh-token`); suite
/// `ww0demo0suite` (secret `demo-suite-secret`, ticket `demo-suite-ticket`) installed in corp
/// `ww0demo0corp` (permanent code `demo-permanent-code`).
fn demo_platforms(server: &standin::StandIn) {
    let cid = "wx0demo0component";
    server.add_component(cid, "demo-component-secret");
    server.push_component_ticket(cid, "demo-ticket");
    server.add_authorizer(cid, "wx0demo0authorizer", "demo-refresh-token");
    let sid = "ww0demo0suite";
    server.add_suite(sid, "demo-suite-secret");
    server.push_suite_ticket(sid, "demo-suite-ticket");
    server.add_corp(sid, "ww0demo0corp", "demo-permanent-code");
}

struct Args {
    port: u16,
    latency_ms: u64,
    exit_on_eof: bool,
    demo: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut port, mut latency_ms, mut exit_on_eof, mut demo) = (0u16, 0u64, false, false);
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
            "--demo-platforms" => demo = true,
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(Args {
        port,
        latency_ms,
        exit_on_eof,
        demo,
    })
}
