//! The `ept` command line. Errors print as one line, `ept: ...`, and exit 2.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    ept::runtime::tune_allocator();
    ept::runtime::default_sigpipe();
    init_logging();
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ept: {err}");
            ExitCode::from(2)
        }
    }
}

/// Log lines as `ept: warning: ...`; the level comes from `RUST_LOG` (default
/// `warn,ept=info`: ept's progress lines where no progress bar is drawn; `warn` hides them,
/// `debug` adds every step). Other crates stay at `warn` by default: cubecl logs every
/// compiled kernel at `info`.
fn init_logging() {
    use std::io::Write;
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,ept=info"))
        .format(|buf, record| {
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            writeln!(buf, "ept: {level}: {}", record.args())
        })
        .init();
}
