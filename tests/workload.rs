//! Random application workloads written with rusqlite (bundled SQLite >= 3.51.3).

use rusqlite::{params, Connection};

use crate::harness::Rng;

pub fn schema(c: &Connection) {
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS kv(k INTEGER PRIMARY KEY, v TEXT, b BLOB);
         CREATE TABLE IF NOT EXISTS log(id INTEGER PRIMARY KEY AUTOINCREMENT, msg TEXT);",
    )
    .unwrap();
}

/// One random transaction; `big` forces a transaction larger than 1000 pages.
pub fn step(c: &mut Connection, rng: &mut Rng, big: bool) {
    let tx = c.transaction().unwrap();
    let kind = if big { 99 } else { rng.below(10) };
    match kind {
        0..=3 => {
            for _ in 0..(1 + rng.below(20)) {
                let k = rng.below(5000) as i64;
                let blob = vec![(k % 251) as u8; rng.below(3000) as usize];
                tx.execute(
                    "INSERT OR REPLACE INTO kv(k, v, b) VALUES (?1, ?2, ?3)",
                    params![k, format!("v{}", rng.next()), blob],
                )
                .unwrap();
            }
        }
        4 | 5 => {
            tx.execute(
                "UPDATE kv SET v = v || 'u' WHERE k % ?1 = 0",
                params![(2 + rng.below(50)) as i64],
            )
            .unwrap();
        }
        6 => {
            tx.execute(
                "DELETE FROM kv WHERE k % ?1 = 1",
                params![(5 + rng.below(50)) as i64],
            )
            .unwrap();
        }
        7 => {
            tx.execute(
                "INSERT INTO log(msg) VALUES (?1)",
                params![format!("m{}", rng.next())],
            )
            .unwrap();
        }
        8 => {
            // Schema changes.
            let n = rng.below(4);
            tx.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS extra{n}(a, b); INSERT INTO extra{n} VALUES (randomblob(100), {});
                 CREATE INDEX IF NOT EXISTS extra{n}_a ON extra{n}(a);",
                rng.next() % 1000
            ))
            .unwrap();
            if rng.below(3) == 0 {
                tx.execute_batch(&format!("DROP TABLE IF EXISTS extra{}", rng.below(4)))
                    .unwrap();
            }
        }
        9 => {
            let has: i64 = tx
                .query_row(
                    "SELECT count(*) FROM pragma_table_info('log') WHERE name='extra'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            if has == 0 {
                tx.execute_batch("ALTER TABLE log ADD COLUMN extra TEXT DEFAULT 'x'")
                    .unwrap();
            } else {
                tx.execute(
                    "UPDATE log SET extra = ?1 WHERE id % 3 = 0",
                    params![format!("e{}", rng.next())],
                )
                .unwrap();
            }
        }
        _ => {
            // > 1000 pages of 4 KiB in one transaction.
            tx.execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 1000)
                 INSERT INTO log(msg) SELECT hex(randomblob(2500)) FROM n",
            )
            .unwrap();
        }
    }
    tx.commit().unwrap();
}
