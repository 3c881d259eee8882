//! The commands: each takes the parsed arguments, does its work, prints its result on
//! stdout and returns the error the binary turns into one line and an exit code.

mod replicas;
mod restore;
mod status;
mod watch;

use walsync::cli::{self, defs, Args, Cmd};
use walsync::error::Result;

pub fn run(a: Args) -> Result<()> {
    match a.cmd {
        Cmd::Help(None) => print!("{}", defs::main_help()),
        Cmd::Help(Some(c)) => print!(
            "{}",
            defs::command_help(defs::command(c).expect("known command"))
        ),
        Cmd::Version => println!("walsync {}", env!("CARGO_PKG_VERSION")),
        Cmd::GenerateMan => print!("{}", cli::man::render()),
        Cmd::Watch => watch::watch(&a)?,
        Cmd::Snapshot => watch::snapshot(&a)?,
        Cmd::Restore => restore::restore(&a)?,
        Cmd::RestoreAll => restore::restore_all(&a)?,
        Cmd::List => replicas::list(&a)?,
        Cmd::Prune => replicas::prune(&a)?,
        Cmd::Verify => replicas::verify(&a)?,
        Cmd::Status => status::status(&a)?,
    }
    Ok(())
}
