//! A connection: plain TCP or TLS (rustls), with the read buffer it keeps between requests.

use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::Instant;

use super::IDLE_TTL;

pub(super) enum Stream {
    Plain(TcpStream),
    /// `early`: the request body was abandoned because the server answered first; reads
    /// must not try to flush the TLS records still waiting to be written.
    #[cfg(feature = "tls")]
    Tls {
        s: Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
        early: bool,
    },
}

impl Stream {
    /// Ask Linux to acknowledge at once while we wait for an answer: a server that writes a
    /// response in two pieces without TCP_NODELAY (Garage's body after its head) otherwise
    /// waits for our delayed ACK, 40 ms per request.
    pub fn quickack(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::TcpStreamExt;
            let _ = self.tcp().set_quickack(true);
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls { s, .. } => s.get_ref(),
        }
    }

    /// Has the server sent something (an answer, or the end of the connection) while we are
    /// still sending? Never blocks. Over TLS, records that carry no application data (session
    /// tickets) do not count.
    pub fn answered(&mut self) -> io::Result<bool> {
        self.tcp().set_nonblocking(true)?;
        let r = match self {
            Stream::Plain(s) => {
                let mut b = [0u8; 1];
                match s.peek(&mut b) {
                    Ok(_) => Ok(true), // data, or 0 = closed
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                    Err(e) => Err(e),
                }
            }
            #[cfg(feature = "tls")]
            Stream::Tls { s, early } => loop {
                match s.conn.read_tls(&mut s.sock) {
                    Ok(n) => {
                        let st = s.conn.process_new_packets().map_err(io::Error::other)?;
                        if n == 0 || st.plaintext_bytes_to_read() > 0 || st.peer_has_closed() {
                            *early = true;
                            break Ok(true);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                    Err(e) => break Err(e),
                }
            },
        };
        self.tcp().set_nonblocking(false)?;
        r
    }
}

/// Read a TLS connection's application data without writing anything: after an early answer
/// the records of the abandoned request body are still queued, and the server no longer reads.
#[cfg(feature = "tls")]
fn read_tls_only(
    s: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match s.conn.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        s.conn.read_tls(&mut s.sock)?;
        s.conn.process_new_packets().map_err(io::Error::other)?;
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls { s, early: true } => read_tls_only(s, buf),
            #[cfg(feature = "tls")]
            Stream::Tls { s, .. } => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls { s, .. } => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            #[cfg(feature = "tls")]
            Stream::Tls { s, .. } => s.flush(),
        }
    }
}

pub(super) struct Conn {
    pub io: BufReader<Stream>,
    pub idle_since: Instant,
    pub reused: bool,
}

impl Conn {
    /// Whether an idle connection still looks usable: nothing buffered, and the socket has
    /// neither been closed by the server nor received anything unasked.
    pub fn alive(&self) -> bool {
        if !self.io.buffer().is_empty() || self.idle_since.elapsed() > IDLE_TTL {
            return false;
        }
        let tcp = self.io.get_ref().tcp();
        if tcp.set_nonblocking(true).is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        let ok = matches!(tcp.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        ok && tcp.set_nonblocking(false).is_ok()
    }
}

/// The CA bundle files of Debian/Ubuntu/Alpine, RHEL/Fedora, openSUSE, Alpine/macOS/OpenBSD and
/// FreeBSD, in that order.
#[cfg(feature = "tls")]
const SYSTEM_BUNDLES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/share/certs/ca-root-nss.crt",
];

/// The certificates of the first bundle file found and of every file in the `SSL_CERT_DIR`
/// directories (`:`-separated), and how many could not be read: a system store may hold
/// what rustls cannot use, which is skipped, not fatal.
#[cfg(feature = "tls")]
pub(super) fn system_roots(
    bundles: &[&str],
    cert_dir: Option<std::ffi::OsString>,
) -> (Vec<rustls::pki_types::CertificateDer<'static>>, usize) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut files: Vec<std::path::PathBuf> = bundles
        .iter()
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_file())
        .take(1)
        .collect();
    for d in cert_dir.iter().flat_map(std::env::split_paths) {
        if let Ok(rd) = std::fs::read_dir(&d) {
            let mut more: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            more.sort();
            files.extend(more.into_iter().filter(|p| p.is_file()));
        }
    }
    let (mut certs, mut skipped) = (Vec::new(), 0);
    for path in &files {
        match CertificateDer::pem_file_iter(path) {
            Ok(it) => {
                let before = certs.len();
                for c in it {
                    match c {
                        Ok(c) => certs.push(c),
                        Err(_) => skipped += 1,
                    }
                }
                if certs.len() == before {
                    skipped += 1;
                }
            }
            Err(_) => skipped += 1,
        }
    }
    (certs, skipped)
}

#[cfg(feature = "tls")]
pub(super) fn tls_config() -> io::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // The system's store, where an administrator installs a company CA
    // (update-ca-certificates, update-ca-trust).
    let (system, skipped) = system_roots(&SYSTEM_BUNDLES, std::env::var_os("SSL_CERT_DIR"));
    for c in system {
        // Each was parsed once already; a duplicate of a built-in root is harmless.
        let _ = roots.add(c);
    }
    if skipped > 0 {
        log::debug!("{skipped} certificate(s) of the system store skipped (unreadable by rustls)");
    }
    // A private CA (a self-hosted MinIO or Garage behind TLS): AWS_CA_BUNDLE, as the AWS
    // tools read it, or SSL_CERT_FILE.
    for var in ["AWS_CA_BUNDLE", "SSL_CERT_FILE"] {
        let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) else {
            continue;
        };
        let certs = CertificateDer::pem_file_iter(&path)
            .map_err(|e| io::Error::other(format!("{var}={}: {e}", path.to_string_lossy())))?;
        for c in certs {
            let c = c.map_err(|e| io::Error::other(format!("{var}: {e}")))?;
            roots
                .add(c)
                .map_err(|e| io::Error::other(format!("{var}: {e}")))?;
        }
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}
