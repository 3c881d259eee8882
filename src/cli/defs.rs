//! Every command and flag, once: the parser, `--help` and the man page are generated from
//! these tables, so they cannot drift.

pub struct Command {
    pub name: &'static str,
    /// Positional arguments, as shown in the synopsis.
    pub args: &'static str,
    pub doc: &'static str,
}

pub struct Flag {
    pub long: &'static str,
    pub short: Option<char>,
    /// Name of the value, or None for a switch.
    pub value: Option<&'static str>,
    /// Commands that accept the flag.
    pub cmds: &'static [&'static str],
    pub doc: &'static str,
}

pub const COMMANDS: &[Command] = &[
    Command {
        name: "watch",
        args: "[DB...]",
        doc: "Replicate databases (given here with -b, or listed in --config) continuously until SIGTERM or SIGINT, which ship everything pending before exit.",
    },
    Command {
        name: "snapshot",
        args: "DB...",
        doc: "Ship pending WAL frames and upload one consistent snapshot of each database (those named, or every one of --config), then exit 0 only on success. Cron-safe: a database a running watch daemon owns is snapshotted by that daemon, in its chain.",
    },
    Command {
        name: "restore",
        args: "[NAME]",
        doc: "Restore database NAME (or --prefix PREFIX of a --config file) from the replica to -o, to the latest commit or to --point-in-time; every object is SHA-256 verified and the result passes integrity_check before it is renamed into place.",
    },
    Command {
        name: "restore-all",
        args: "",
        doc: "Restore every database of a config file into --output-dir, in parallel (at most 4 at a time); each is verified like 'restore'.",
    },
    Command {
        name: "list",
        args: "",
        doc: "List the databases in the replica with their snapshots, WAL segments and newest restorable time.",
    },
    Command {
        name: "verify",
        args: "NAME",
        doc: "Check the SHA-256 of every object of database NAME and the continuity of its chain.",
    },
    Command {
        name: "prune",
        args: "[NAME]",
        doc: "Apply retention now to database NAME (or every database of --config): delete the objects older than the newest snapshot at or before now minus the retention, so every point in time inside the window still restores; oldest first, so an interrupted prune leaves a replica that restores. The watch daemon (and 'snapshot') does the same after each snapshot it uploads.",
    },
    Command {
        name: "status",
        args: "[DB...]",
        doc: "Show how far behind each database is (those named, or every one of --config), worst first, as the running watch daemon reports it in each database's spool directory: lag, objects waiting, last upload, the current error. Says so when no daemon runs for a database. Exits 1 when any database lags, fails or has no daemon.",
    },
];

const ALL: &[&str] = &[
    "watch",
    "snapshot",
    "restore",
    "restore-all",
    "list",
    "verify",
    "prune",
    "status",
];

pub const FLAGS: &[Flag] = &[
    Flag {
        long: "bucket",
        short: Some('b'),
        value: Some("URL"),
        cmds: ALL,
        doc: "Replica location: s3://bucket[/prefix], file:///abs/dir, or a directory path.",
    },
    Flag {
        long: "endpoint",
        short: None,
        value: Some("URL"),
        cmds: ALL,
        doc: "S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3, else AWS).",
    },
    Flag {
        long: "addressing",
        short: None,
        value: Some("STYLE"),
        cmds: ALL,
        doc: "S3 addressing: path (endpoint/bucket/key), virtual (bucket.endpoint/key) or auto (default: virtual for AWS, path for an --endpoint; else the profile's s3 addressing_style).",
    },
    Flag {
        long: "config",
        short: Some('c'),
        value: Some("FILE"),
        cmds: &["watch", "snapshot", "restore", "restore-all", "prune", "status"],
        doc: "TOML config file: [storage], [defaults] and [[databases]] (path, or dir + pattern; prefix; intervals).",
    },
    Flag {
        long: "prefix",
        short: None,
        value: Some("PREFIX"),
        cmds: &["restore"],
        doc: "With --config: the database whose prefix (or, for a dir entry, prefix/NAME) this is.",
    },
    Flag {
        long: "output-dir",
        short: None,
        value: Some("DIR"),
        cmds: &["restore-all"],
        doc: "Directory to restore into; each database becomes DIR/<prefix>.db.",
    },
    Flag {
        long: "sync-interval",
        short: None,
        value: Some("DUR"),
        cmds: &["watch"],
        doc: "Batch commits for this long before shipping a segment (default 1s; 0 ships each commit at once).",
    },
    Flag {
        long: "snapshot-interval",
        short: None,
        value: Some("DUR"),
        cmds: &["watch"],
        doc: "Take a new snapshot of a changed database this often (default 1h).",
    },
    Flag {
        long: "retention",
        short: None,
        value: Some("DUR|forever"),
        cmds: &["watch", "snapshot", "prune"],
        doc: "Keep every point in time of this window restorable and delete what only older ones need (default 24h; 'forever' never deletes, e.g. to leave it to a bucket lifecycle rule).",
    },
    Flag {
        long: "compression",
        short: None,
        value: Some("lz4|none"),
        cmds: &["watch", "snapshot"],
        doc: "Store WAL segments LZ4-compressed (key .wal.lz4; a manual recovery then needs 'lz4 -d') or plain (default none: sqlite3 alone replays them). Snapshots stay plain.",
    },
    Flag {
        long: "dry-run",
        short: None,
        value: None,
        cmds: &["prune"],
        doc: "Print what would be deleted; delete nothing.",
    },
    Flag {
        long: "json",
        short: None,
        value: None,
        cmds: &["status", "list", "verify"],
        doc: "Print one JSON object per database, one per line (field names are stable; see the README), instead of text.",
    },
    Flag {
        long: "metrics-addr",
        short: None,
        value: Some("HOST:PORT"),
        cmds: &["watch"],
        doc: "Serve /metrics (Prometheus text format) and /healthz (HTTP 503 when a database lags or fails) on this address; off by default (config: [metrics] addr).",
    },
    Flag {
        long: "uploads",
        short: None,
        value: Some("N"),
        cmds: &["watch"],
        doc: "Uploads in flight at most, one per database at a time, each on its own keep-alive connection (default 32).",
    },
    Flag {
        long: "output",
        short: Some('o'),
        value: Some("FILE"),
        cmds: &["restore"],
        doc: "Where to write the restored database.",
    },
    Flag {
        long: "point-in-time",
        short: None,
        value: Some("ISO8601"),
        cmds: &["restore", "restore-all"],
        doc: "Restore the state after the last segment at or before this time (e.g. 2026-11-22T10:00:00Z).",
    },
    Flag {
        long: "force",
        short: Some('f'),
        value: None,
        cmds: &["restore", "restore-all"],
        doc: "Replace the output file if it exists (its -wal and -shm are removed).",
    },
    Flag { long: "help", short: Some('h'), value: None, cmds: ALL, doc: "Print help and exit." },
];

pub fn command(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name == name)
}

pub fn flag(cmd: &str, long: Option<&str>, short: Option<char>) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| {
        f.cmds.contains(&cmd)
            && (long.is_some_and(|l| l == f.long) || (short.is_some() && short == f.short))
    })
}

fn wrap(text: &str, indent: usize, width: usize) -> String {
    let mut out = String::new();
    let mut col = indent;
    for w in text.split_whitespace() {
        if col + w.len() + 1 > width && col > indent {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            col = indent;
        } else if col > indent {
            out.push(' ');
            col += 1;
        }
        out.push_str(w);
        col += w.len();
    }
    out
}

fn flag_label(f: &Flag) -> String {
    let short = f
        .short
        .map(|c| format!("-{c}, "))
        .unwrap_or_else(|| "    ".into());
    match f.value {
        Some(v) => format!("{short}--{} {v}", f.long),
        None => format!("{short}--{}", f.long),
    }
}

/// `walsync CMD --help`.
pub fn command_help(c: &Command) -> String {
    let mut s = format!("Usage: walsync {} {} [OPTIONS]\n\n", c.name, c.args).replace("  ", " ");
    s.push_str(&wrap(c.doc, 0, 80));
    s.push_str("\n\nOptions:\n");
    for f in FLAGS.iter().filter(|f| f.cmds.contains(&c.name)) {
        let label = flag_label(f);
        // A label too long for its column gets the text on the next line.
        let gap = if label.len() < 28 {
            String::new()
        } else {
            format!("\n{:30}", "")
        };
        s.push_str(&format!("  {label:<28}{gap}{}\n", wrap(f.doc, 30, 100)));
    }
    s
}

/// `walsync --help`.
pub fn main_help() -> String {
    let mut s = String::from(
        "walsync: continuous backup of many SQLite databases (WAL mode) to S3 or a local directory\n\nUsage: walsync COMMAND [ARGS] [OPTIONS]\n\nCommands:\n",
    );
    for c in COMMANDS {
        let first = c.doc.split(['.', ';']).next().unwrap_or(c.doc);
        s.push_str(&format!("  {:<10}{}\n", c.name, first));
    }
    s.push_str("\nRun 'walsync COMMAND --help' for a command's options.\n");
    s.push_str("Environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3, AWS_REGION, RUST_LOG.\n");
    s.push_str("Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_documented_and_unambiguous() {
        for c in COMMANDS {
            let mut shorts = std::collections::HashSet::new();
            let mut longs = std::collections::HashSet::new();
            for f in FLAGS.iter().filter(|f| f.cmds.contains(&c.name)) {
                assert!(!f.doc.is_empty(), "--{} has no doc", f.long);
                assert!(longs.insert(f.long), "duplicate --{} in {}", f.long, c.name);
                if let Some(s) = f.short {
                    assert!(shorts.insert(s), "duplicate -{s} in {}", c.name);
                }
            }
            let help = command_help(c);
            assert!(help.contains(c.doc.split_whitespace().next().unwrap()));
            // Every flag's text starts after its label, never glued to it.
            for f in FLAGS.iter().filter(|f| f.cmds.contains(&c.name)) {
                let label = flag_label(f);
                let line = help.lines().find(|l| l.contains(&label)).unwrap();
                assert!(
                    line.trim_end() == format!("  {label}")
                        || line[2 + label.len()..].starts_with(' '),
                    "{line}"
                );
            }
        }
        for f in FLAGS {
            for c in f.cmds {
                assert!(
                    command(c).is_some(),
                    "--{} names unknown command {c}",
                    f.long
                );
            }
        }
    }
}
