//! Deleting many objects: one multi-object DELETE (`POST ?delete`, Content-MD5 as S3 requires)
//! per 1,000 keys, each key's own error reported; servers without it (NotImplemented) get
//! one DELETE a key from then on.

use std::sync::atomic::Ordering;

use log::info;

use super::xml::{escape, xml_blocks, xml_tag};
use super::{S3Storage, DELETE_BATCH, XML_LIMIT};
use crate::error::{Error, Result, StorageKind};
use crate::storage::http::ReqBody;
use crate::storage::Storage;

impl S3Storage {
    pub(super) fn delete_batches(&self, keys: &[String], done: &mut dyn FnMut(&str)) -> Result<()> {
        for batch in keys.chunks(DELETE_BATCH) {
            if batch.len() == 1 || self.no_multi_delete.load(Ordering::Relaxed) {
                for k in batch {
                    self.delete(k)?;
                    done(k);
                }
                continue;
            }
            let mut xml = String::from("<Delete><Quiet>true</Quiet>");
            for k in batch {
                xml.push_str(&format!("<Object><Key>{}</Key></Object>", escape(k)));
            }
            xml.push_str("</Delete>");
            let md5 = crate::digest::base64(&md5::compute(xml.as_bytes()).0);
            let headers = [("content-md5".to_string(), md5)];
            let q = [("delete", "")];
            let answer = match self.request_text(
                "POST",
                "",
                &q,
                &headers,
                ReqBody::Bytes(xml.as_bytes()),
                XML_LIMIT,
            ) {
                Ok(a) => a,
                // Servers without it (B2's S3 API before 2021, some gateways): one by one.
                Err(Error::Storage { ref msg, .. })
                    if msg.contains("NotImplemented") || msg.starts_with("HTTP 501") =>
                {
                    info!(
                        "{}: no multi-object DELETE; deleting one by one",
                        self.describe()
                    );
                    self.no_multi_delete.store(true, Ordering::Relaxed);
                    for k in batch {
                        self.delete(k)?;
                        done(k);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let failed: Vec<(String, String)> = xml_blocks(&answer, "Error")
                .filter_map(|e| {
                    let key = xml_tag(e, "Key")?;
                    let why = format!(
                        "{} {}",
                        xml_tag(e, "Code").unwrap_or_default(),
                        xml_tag(e, "Message").unwrap_or_default()
                    );
                    Some((key, why.trim().to_string()))
                })
                .collect();
            for k in batch {
                if !failed.iter().any(|(f, _)| f == k) {
                    done(k);
                }
            }
            if let Some((key, why)) = failed.first() {
                return Err(self.err(
                    key,
                    StorageKind::Transient,
                    format!(
                        "{} of {} deletions refused: {why}",
                        failed.len(),
                        batch.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}
