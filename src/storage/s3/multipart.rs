//! Multipart uploads: objects larger than one part are sent as a streamed multipart upload,
//! completed only when every part is in, aborted on failure, so no reader ever sees a partial
//! object. From a file (the spool, `put_file`) each part is a byte range read twice: once for
//! its SHA-256, signed as the part's payload hash so the server verifies every byte it
//! receives, once to send it. From a stream, parts go `UNSIGNED-PAYLOAD`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use super::xml::{escape, xml_tag};
use super::{S3Storage, ERROR_BODY_LIMIT, MAX_PARTS, PART_SIZE, XML_LIMIT};
use crate::digest;
use crate::error::{Error, Result, StorageKind};
use crate::storage::http::ReqBody;

/// Where the parts come from.
pub(super) enum Source<'a> {
    Stream(&'a mut dyn Read),
    File(&'a File),
}

/// Bytes `pos .. end` of a file, read with `pread` (the file's offset is not used).
struct Range<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Range<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// SHA-256 (hex) of bytes `start .. start + len` of `file`.
fn range_sha256(file: &File, start: u64, len: u64) -> io::Result<String> {
    let mut r = Range {
        file,
        pos: start,
        end: start + len,
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(digest::hex(h))
}

impl S3Storage {
    pub(super) fn put_multipart(
        &self,
        key: &str,
        mut src: Source,
        len: u64,
        headers: &[(String, String)],
    ) -> Result<()> {
        let q = [("uploads", "")];
        let xml = self.request_text("POST", key, &q, headers, ReqBody::Empty, XML_LIMIT)?;
        let upload_id = xml_tag(&xml, "UploadId").ok_or_else(|| {
            self.err(
                key,
                StorageKind::Transient,
                "multipart initiation answered without an UploadId".into(),
            )
        })?;
        let res = (|| -> Result<()> {
            let part_size = PART_SIZE.max(len.div_ceil(MAX_PARTS));
            let mut done = String::from("<CompleteMultipartUpload>");
            let mut sent = 0u64;
            let mut n = 0u32;
            while sent < len {
                n += 1;
                let part_len = part_size.min(len - sent);
                let etag = self.upload_part(key, &mut src, &upload_id, n, (sent, part_len))?;
                done.push_str(&format!(
                    "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                    escape(&etag)
                ));
                sent += part_len;
            }
            done.push_str("</CompleteMultipartUpload>");
            // S3 may report a failed completion with a 200 status and an <Error> body.
            let xml = self.request_text(
                "POST",
                key,
                &[("uploadId", &upload_id)],
                &[("content-type".into(), "application/xml".into())],
                ReqBody::Bytes(done.as_bytes()),
                XML_LIMIT,
            )?;
            if xml.contains("<Error>") {
                return Err(self.status_err(key, 500, &xml));
            }
            Ok(())
        })();
        if res.is_err() {
            // Best effort: an unfinished multipart upload is invisible to readers anyway.
            if let Ok(r) = self.request(
                "DELETE",
                key,
                &[("uploadId", &upload_id)],
                &[],
                ReqBody::Empty,
            ) {
                let _ = r.text(ERROR_BODY_LIMIT);
            }
        }
        res
    }

    /// Part `n` (bytes `sent..sent + part_len` of the source): its ETag. A part from a file
    /// signs its own SHA-256 (read twice with pread), so the server checks every byte.
    fn upload_part(
        &self,
        key: &str,
        src: &mut Source,
        upload_id: &str,
        n: u32,
        (sent, part_len): (u64, u64),
    ) -> Result<String> {
        let num = n.to_string();
        let q = [("partNumber", num.as_str()), ("uploadId", upload_id)];
        let resp = match src {
            Source::Stream(r) => {
                self.request("PUT", key, &q, &[], ReqBody::Stream(&mut **r, part_len))?
            }
            Source::File(f) => {
                let sha = range_sha256(f, sent, part_len)
                    .map_err(|e| Error::io("read spool file", key, e))?;
                let mut part = Range {
                    file: f,
                    pos: sent,
                    end: sent + part_len,
                };
                let body = ReqBody::Stream(&mut part, part_len);
                self.request_signed("PUT", key, &q, &[], body, Some(&sha))?
            }
        };
        let etag = resp.header("etag").unwrap_or("").to_string();
        self.body_text(key, resp, ERROR_BODY_LIMIT)?;
        if etag.is_empty() {
            return Err(self.err(
                key,
                StorageKind::Transient,
                format!("part {n} answered without an ETag"),
            ));
        }
        Ok(etag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_part_is_hashed_and_read_from_its_own_range() {
        let path = std::env::temp_dir().join(format!("walsync-part-{}", std::process::id()));
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        File::create(&path).unwrap().write_all(&bytes).unwrap();
        let f = File::open(&path).unwrap();
        let (start, len) = (12_345u64, 54_321u64);
        let want = digest::hex(Sha256::new_with_prefix(
            &bytes[start as usize..(start + len) as usize],
        ));
        assert_eq!(range_sha256(&f, start, len).unwrap(), want);
        let mut part = Range {
            file: &f,
            pos: start,
            end: start + len,
        };
        let mut got = Vec::new();
        part.read_to_end(&mut got).unwrap();
        assert_eq!(got, &bytes[start as usize..(start + len) as usize]);
        std::fs::remove_file(&path).unwrap();
    }
}
