//! The `ept` command line. Errors print as one line, `ept: ...`, and exit 2.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    ept::runtime::tune_allocator();
    ept::runtime::default_sigpipe();
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ept: {err}");
            ExitCode::from(2)
        }
    }
}
