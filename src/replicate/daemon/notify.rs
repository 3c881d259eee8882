//! systemd's readiness and watchdog protocol (sd_notify(3)) without libsystemd: one datagram
//! to `$NOTIFY_SOCKET` per message. `READY=1` once the databases are watched, `STOPPING=1` at
//! the first signal, and `WATCHDOG=1` from the event loop itself at half of `$WATCHDOG_USEC`
//! when the unit sets `WatchdogSec=` (so a hung loop gets the daemon restarted; without it,
//! nothing wakes an idle daemon).

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use log::debug;

pub(super) struct Notify {
    sock: Option<(UnixDatagram, String)>,
    /// Half the watchdog timeout, and the last ping.
    pub every: Option<Duration>,
    pub last: Instant,
}

impl Notify {
    pub fn from_env() -> Notify {
        let path = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|p| !p.is_empty());
        let sock = path.and_then(|p| UnixDatagram::unbound().ok().map(|s| (s, p)));
        // Only for this process (systemd sets WATCHDOG_PID to the main pid when it is known).
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && ours && sock.is_some())
            .map(|u| Duration::from_micros(u / 2));
        Notify {
            sock,
            every,
            last: Instant::now(),
        }
    }

    pub fn send(&self, msg: &str) {
        let Some((s, path)) = &self.sock else {
            return;
        };
        let r = match path.strip_prefix('@') {
            #[cfg(target_os = "linux")]
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .and_then(|a| s.send_to_addr(msg.as_bytes(), &a))
            }
            _ => s.send_to(msg.as_bytes(), path),
        };
        if let Err(e) = r {
            debug!("sd_notify {msg}: {e}");
        }
    }

    /// When the next watchdog ping is due.
    pub fn due(&self) -> Option<Instant> {
        self.every.map(|e| self.last + e)
    }

    /// Ping the watchdog when due.
    pub fn tick(&mut self, now: Instant) {
        if self.due().is_some_and(|t| t <= now) {
            self.send("WATCHDOG=1");
            self.last = now;
        }
    }
}
