//! The `walsync` binary: the command line of `walsync::cmd::main`.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(walsync::cmd::main(std::env::args_os().skip(1)))
}
