//! Multipart uploads: objects larger than one part are sent as a streamed multipart upload
//! (each part a byte range of the spool file, its SHA-256 signed), completed only when every
//! part is in, aborted on failure, so no reader ever sees a partial object.

use std::io::Read;

use super::xml::{escape, xml_tag};
use super::{S3Storage, ERROR_BODY_LIMIT, MAX_PARTS, PART_SIZE, XML_LIMIT};
use crate::error::{Result, StorageKind};
use crate::storage::http::ReqBody;

impl S3Storage {
    pub(super) fn put_multipart(
        &self,
        key: &str,
        src: &mut dyn Read,
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
                let num = n.to_string();
                let resp = self.request(
                    "PUT",
                    key,
                    &[("partNumber", &num), ("uploadId", &upload_id)],
                    &[],
                    ReqBody::Stream(src, part_len),
                )?;
                let etag = resp.header("etag").unwrap_or("").to_string();
                self.body_text(key, resp, ERROR_BODY_LIMIT)?;
                if etag.is_empty() {
                    return Err(self.err(
                        key,
                        StorageKind::Transient,
                        format!("part {n} answered without an ETag"),
                    ));
                }
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
}
