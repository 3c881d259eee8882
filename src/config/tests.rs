//! Unit tests of `config`.

use super::*;

#[test]
fn globs() {
    let cases = [
        ("*.db", "a.db", true),
        ("*.db", "a.db-wal", false),
        ("t?.db", "t1.db", true),
        ("*", "", true),
        ("a*b*c", "aXbYc", true),
        ("a*b", "ac", false),
    ];
    for (p, n, want) in cases {
        assert_eq!(glob_match(p, n), want, "{p} {n}");
    }
}

#[test]
fn errors_name_file_line_and_column() {
    let dir = std::env::temp_dir().join(format!("walsync-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.db"), b"").unwrap();
    let f = dir.join("walsync.toml");
    let cases = [
        ("[storage]\nbucket = \"s3://b\"\nbogus = 1\n[[databases]]\npath = \"a.db\"\n", ":3:1: unknown field `bogus`"),
        ("[storage]\nbucket = \"s3://b\"\n[defaults]\nsync_interval = \"5x\"\n[[databases]]\npath = \"a.db\"\n", ":4:17: sync_interval: invalid duration '5x': unknown unit 'x' (use ms, s, m, h or d)"),
        ("[storage]\nbucket = \"s3://b\"\n[[databases]]\npath = \"missing.db\"\n", ":4:8: path: database"),
        ("[storage]\nbucket = \"s3://b\"\n[[databases]]\npath = \"a.db\"\n[[databases]]\npath = \"a.db\"\n", ":6:8: prefix: prefix 'a' is used by database entry 1 too"),
        ("[storage]\nbucket = \"${WALSYNC_SURELY_UNSET}\"\n[[databases]]\npath = \"a.db\"\n", ":2:10: bucket: environment variable WALSYNC_SURELY_UNSET is not set"),
        ("[storage\n", ":1:9: "),
        ("[storage]\nbucket = \"s3://b\"\naddressing = \"vhost\"\n[[databases]]\npath = \"a.db\"\n", ":3:14: addressing: 'vhost' is not path, virtual or auto"),
    ];
    for (text, want) in cases {
        let e = parse(&f, text).unwrap_err().to_string();
        assert!(e.contains(want), "got {e:?}, want {want:?}");
        assert!(e.starts_with(&format!("config {}", f.display())), "{e}");
    }
    let ok = parse(
        &f,
        "[storage]\nbucket = \"s3://b/pre\"\n[[databases]]\npath = \"a.db\"\nprefix = \"users\"\n",
    )
    .unwrap();
    assert_eq!(ok.databases[0].ns, "pre/users");
    assert_eq!(ok.s3.addressing, crate::storage::s3::Addressing::Auto);
    let virt = parse(
        &f,
        "[storage]\nbucket = \"b\"\naddressing = \"virtual\"\n[[databases]]\npath = \"a.db\"\n",
    )
    .unwrap();
    assert_eq!(virt.s3.addressing, crate::storage::s3::Addressing::Virtual);
    let _ = std::fs::remove_dir_all(&dir);
}
