//! `man/walsync.1`, generated from the same command and flag tables as `--help`
//! (`walsync generate-man` prints it; a test fails when the committed file drifts).

use super::defs::{Flag, COMMANDS, FLAGS};

fn esc(s: &str) -> String {
    let s = s.replace('\\', "\\\\").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

fn flag_line(f: &Flag) -> String {
    let short = f
        .short
        .map(|c| format!("\\fB\\-{c}\\fR, "))
        .unwrap_or_default();
    let value = f.value.map(|v| format!(" \\fI{v}\\fR")).unwrap_or_default();
    format!("{short}\\fB\\-\\-{}\\fR{value}", esc(f.long))
}

pub fn render() -> String {
    let mut m = String::new();
    m.push_str(&format!(
        ".TH WALSYNC 1 \"\" \"walsync {}\" \"User Commands\"\n",
        env!("CARGO_PKG_VERSION")
    ));
    m.push_str(".SH NAME\nwalsync \\- continuous backup of many SQLite databases (WAL mode) to S3 or a local directory\n");
    m.push_str(".SH SYNOPSIS\n");
    for c in COMMANDS {
        m.push_str(&format!(".B walsync {}\n", esc(c.name)));
        if !c.args.is_empty() {
            m.push_str(&format!(".I {}\n", esc(c.args)));
        }
        m.push_str("[\\fIOPTIONS\\fR]\n.br\n");
    }
    m.push_str(".SH DESCRIPTION\nOne process replicates every database it is given: it ships committed WAL frames as segments (standalone SQLite WAL files) and periodic snapshots, each carrying its SHA\\-256, and restores any database to its latest commit or to a point in time, verifying every byte and the continuity of the chain.\n");
    m.push_str(".SH COMMANDS\n");
    for c in COMMANDS {
        m.push_str(&format!(".SS {}\n{}\n", esc(c.name), esc(c.doc)));
        for f in FLAGS.iter().filter(|f| f.cmds.contains(&c.name)) {
            m.push_str(&format!(".TP\n{}\n{}\n", flag_line(f), esc(f.doc)));
        }
    }
    m.push_str(".SH DURATIONS\n\\fI250ms\\fR, \\fI1s\\fR, \\fI5m\\fR, \\fI1h\\fR, \\fI1d\\fR, or a bare number of seconds.\n");
    m.push_str(".SH REPLICA URLS\n\\fBs3://\\fIbucket\\fR[\\fB/\\fIprefix\\fR], \\fBfile:///\\fIdir\\fR, or a directory path. Objects: \\fIprefix/name\\fB/snapshots/\\fIYYYYMMDDHHMMSSmmm\\fB.db\\fR and \\fIprefix/name\\fB/wal/\\fIGGGGGGGG\\fB\\-\\fIYYYYMMDDHHMMSSmmm\\fB.wal\\fR.\n");
    m.push_str(".SH CONFIGURATION FILE\nTOML with a \\fB[storage]\\fR table (\\fBbucket\\fR, \\fBendpoint\\fR, \\fBregion\\fR, \\fBaddressing\\fR), an optional \\fB[defaults]\\fR table (\\fBsnapshot_interval\\fR, \\fBsync_interval\\fR) and \\fB[[databases]]\\fR entries with either \\fBpath\\fR or \\fBdir\\fR and \\fBpattern\\fR, an optional \\fBprefix\\fR and per\\-database intervals. \\fB${VAR}\\fR is replaced from the environment. SIGHUP re\\-reads the file.\n");
    m.push_str(".SH ENVIRONMENT\n.TP\n\\fBAWS_ACCESS_KEY_ID\\fR, \\fBAWS_SECRET_ACCESS_KEY\\fR, \\fBAWS_SESSION_TOKEN\\fR, \\fBAWS_PROFILE\\fR\nS3 credentials (else the profile of ~/.aws/credentials and ~/.aws/config: keys, credential_process or role_arn with source_profile/credential_source; then web identity, the container endpoint, instance metadata).\n.TP\n\\fBAWS_ENDPOINT_URL_S3\\fR\nS3 endpoint (path\\-style addressing unless \\-\\-addressing virtual) when \\-\\-endpoint is not given.\n.TP\n\\fBAWS_REGION\\fR\nRegion (else the profile\\(aqs region in ~/.aws/config, else us\\-east\\-1).\n.TP\n\\fBAWS_CA_BUNDLE\\fR, \\fBSSL_CERT_FILE\\fR, \\fBSSL_CERT_DIR\\fR\nPEM file (directories) of extra certificate authorities trusted for HTTPS endpoints (a private CA), besides the built\\-in roots and the system\\(aqs bundle (/etc/ssl/certs/ca\\-certificates.crt and its equivalents).\n.TP\n\\fBRUST_LOG\\fR\nLog level filter (default info for watch, warn otherwise).\n");
    m.push_str(".SH SIGNALS\nSIGTERM and SIGINT ship everything pending, then exit; a second one exits at once. SIGHUP re\\-reads the configuration file. SIGUSR1 makes the daemon answer the snapshot requests of \\fBwalsync snapshot\\fR runs.\n");
    m.push_str(".SH FILES\n.TP\n\\fI.DB\\-walsync/\\fR\nBeside each database: the spool of captured segments waiting for upload, and the \\fBowner\\fR file naming the walsync replicating it. A \\fBwalsync snapshot\\fR started while a daemon owns the database leaves a request there and waits for the daemon's snapshot, so cron and the daemon share one chain.\n.TP\n\\fI/etc/walsync/walsync.toml\\fR\nThe packaged service's configuration file.\n.TP\n\\fI/etc/default/walsync\\fR\nEnvironment of the packaged service (S3 credentials, RUST_LOG).\n");
    m.push_str(".SH EXIT STATUS\n0 success, 1 runtime failure, 2 usage or configuration error.\n");
    m.push_str(".SH EXAMPLES\n.nf\nwalsync watch /srv/app.db \\-b s3://backups/prod\nwalsync watch \\-\\-config /etc/walsync/walsync.toml\nwalsync restore app \\-o /tmp/app.db \\-b s3://backups/prod \\-\\-point\\-in\\-time 2026\\-11\\-22T10:00:00Z\nwalsync restore\\-all \\-\\-config /etc/walsync/walsync.toml \\-\\-output\\-dir /restore\n# crontab: a snapshot every night, also while the daemon runs\n15 3 * * * walsync snapshot /srv/app.db \\-b s3://backups/prod\n.fi\n");
    m
}
