//! UTC timestamps without a date crate: the `YYYYMMDDHHMMSSmmm` form used in object keys,
//! ISO 8601 for `--point-in-time` and for output. Civil-date math after H. Hinnant's
//! `days_from_civil`, valid for the proleptic Gregorian calendar.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A moment in UTC to the millisecond (milliseconds since the Unix epoch): the time of an
/// object in its key, of a point in time to restore to, of a status field, of a credential's
/// expiry. One type, so that a duration, a size or a count can't be passed where a time is
/// meant, and so that every form it is written in (`key`, `iso`) comes from here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(u64);

impl Stamp {
    /// The wall clock now.
    pub fn now() -> Stamp {
        Stamp(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        )
    }

    pub const fn from_ms(ms: u64) -> Stamp {
        Stamp(ms)
    }

    /// Milliseconds since the epoch: for files and metrics that store the number.
    pub const fn ms(self) -> u64 {
        self.0
    }

    /// Seconds since the epoch, as metrics expose it.
    pub fn secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    /// `YYYYMMDDHHMMSSmmm`, the timestamp inside object keys.
    pub fn key(self) -> String {
        let p = parts(self.0);
        format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}{:03}",
            p.y, p.mo, p.d, p.h, p.mi, p.s, p.ms
        )
    }

    /// `2026-11-22T10:04:05.123Z`
    pub fn iso(self) -> String {
        let p = parts(self.0);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            p.y, p.mo, p.d, p.h, p.mi, p.s, p.ms
        )
    }

    /// How long after `earlier` this is; zero if it is not after it (a clock set back).
    pub fn since(self, earlier: Stamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// `d` later.
    pub fn after(self, d: Duration) -> Stamp {
        Stamp(self.0.saturating_add(d.as_millis() as u64))
    }

    /// `d` earlier, or the epoch.
    pub fn before(self, d: Duration) -> Stamp {
        Stamp(self.0.saturating_sub(d.as_millis() as u64))
    }

    /// The next millisecond: object times of one database are strictly increasing.
    pub fn next(self) -> Stamp {
        Stamp(self.0 + 1)
    }

    /// Parse a key timestamp (`YYYYMMDDHHMMSSmmm`).
    pub fn parse_key(s: &str) -> Option<Stamp> {
        parse_key_ts(s).map(Stamp)
    }

    /// Parse ISO 8601 (see `parse_iso_ms` for the forms taken).
    pub fn parse_iso(s: &str) -> Option<Stamp> {
        parse_iso_ms(s).map(Stamp)
    }
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.iso())
    }
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

struct Parts {
    y: i64,
    mo: u32,
    d: u32,
    h: u32,
    mi: u32,
    s: u32,
    ms: u32,
}

fn parts(ms: u64) -> Parts {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400) as u32;
    Parts {
        y,
        mo,
        d,
        h: sod / 3600,
        mi: sod / 60 % 60,
        s: sod % 60,
        ms: (ms % 1000) as u32,
    }
}

fn num(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn to_ms(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32, ms: u32) -> Option<u64> {
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 || ms > 999
    {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    if civil_from_days(days) != (y, mo, d) {
        return None; // 31 February and friends
    }
    let t = days * 86_400_000 + (h as i64 * 3600 + mi as i64 * 60 + s as i64) * 1000 + ms as i64;
    u64::try_from(t).ok()
}

/// Parse a key timestamp (`YYYYMMDDHHMMSSmmm`).
fn parse_key_ts(s: &str) -> Option<u64> {
    // ASCII only: the byte ranges below must fall on character boundaries.
    if s.len() != 17 || !s.is_ascii() {
        return None;
    }
    let n = |a: usize, b: usize| num(&s[a..b]);
    to_ms(
        n(0, 4)? as i64,
        n(4, 6)?,
        n(6, 8)?,
        n(8, 10)?,
        n(10, 12)?,
        n(12, 14)?,
        n(14, 17)?,
    )
}

/// Parse ISO 8601: `2026-11-22T10:04:05Z`, with optional fraction (`.123`, up to ms precision
/// kept), a `Z` or `+hh:mm`/`-hh:mm` offset (none means UTC), a space instead of `T`, or a
/// bare date (midnight UTC).
fn parse_iso_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    // ASCII only: the byte ranges below must fall on character boundaries.
    if !s.is_ascii() || s.len() < 10 || s.as_bytes()[4] != b'-' || s.as_bytes()[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(&s[0..4])? as i64, num(&s[5..7])?, num(&s[8..10])?);
    if s.len() == 10 {
        return to_ms(y, mo, d, 0, 0, 0, 0);
    }
    let rest = &s[10..];
    let rest = rest.strip_prefix('T').or_else(|| rest.strip_prefix(' '))?;
    if rest.len() < 8 || &rest[2..3] != ":" || &rest[5..6] != ":" {
        return None;
    }
    let (h, mi, sec) = (num(&rest[0..2])?, num(&rest[3..5])?, num(&rest[6..8])?);
    let mut rest = &rest[8..];
    let mut ms = 0;
    if let Some(r) = rest.strip_prefix('.') {
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        let frac = &r[..end];
        if frac.is_empty() {
            return None;
        }
        let f3: String = frac.chars().chain("000".chars()).take(3).collect();
        ms = num(&f3)?;
        rest = &r[end..];
    }
    let offset_min: i64 = match rest {
        "" | "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let v = num(&o[1..3])? as i64 * 60 + num(&o[4..6])? as i64;
            if o.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let t = to_ms(y, mo, d, h, mi, sec, ms)? as i64 - offset_min * 60_000;
    u64::try_from(t).ok()
}

/// A duration as the command line writes it: `1d`, `24h`, `90m`, `30s`, `250ms`.
pub fn fmt_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    for (unit, n) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= n && ms.is_multiple_of(n) {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

/// Parse a duration: `250ms`, `1s`, `5m`, `1h`, `1d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration '{s}' (use e.g. 250ms, 1s, 5m, 1h, 1d or 3600)"))?;
    let mult = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => {
            return Err(format!(
                "invalid duration '{s}': unknown unit '{unit}' (use ms, s, m, h or d)"
            ))
        }
    };
    let secs = v * mult;
    if !secs.is_finite() || !(0.0..=10.0 * 365.0 * 86400.0).contains(&secs) {
        return Err(format!("invalid duration '{s}'"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_iso_round_trip() {
        let cases = [
            (0u64, "19700101000000000", "1970-01-01T00:00:00.000Z"),
            (
                1_795_305_845_123,
                "20261122000405123",
                "2026-11-22T00:04:05.123Z",
            ),
            (
                951_782_400_000,
                "20000229000000000",
                "2000-02-29T00:00:00.000Z",
            ),
        ];
        for (ms, key, isos) in cases {
            let t = Stamp::from_ms(ms);
            assert_eq!(t.key(), key);
            assert_eq!(t.iso(), isos);
            assert_eq!(Stamp::parse_key(key), Some(t));
            assert_eq!(Stamp::parse_iso(isos), Some(t));
        }
    }

    #[test]
    fn iso_variants() {
        let base = parse_iso_ms("2026-11-22T10:00:00Z").unwrap();
        let cases = [
            ("2026-11-22T10:00:00", Some(base)),
            ("2026-11-22 10:00:00.5Z", Some(base + 500)),
            ("2026-11-22T11:30:00+01:30", Some(base)),
            ("2026-11-22T08:00:00-02:00", Some(base)),
            ("2026-11-22", Some(base - 10 * 3_600_000)),
            ("2026-02-30T00:00:00Z", None),
            ("yesterday", None),
            ("2026-11-22T10:00", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_iso_ms(input), want, "{input}");
        }
    }
}
