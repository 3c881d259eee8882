//! What an S3 error answer means for the workers (retry, or stop and say why) and the one
//! line the log and the CLI show: S3's own code and message, the bucket and the endpoint.

use super::xml::xml_tag;
use crate::error::StorageKind;

/// What an error answer means: its class and one line for the log, with S3's own code and
/// message, and the bucket's region when the server names it (a wrong region).
pub(super) fn classify(
    status: u16,
    body: &str,
    bucket: &str,
    endpoint: &str,
) -> (StorageKind, String) {
    let code = xml_tag(body, "Code").unwrap_or_default();
    let message = xml_tag(body, "Message").unwrap_or_default();
    let region = xml_tag(body, "Region").filter(|r| {
        !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    // S3's own explanation, one line, bounded.
    let message: String = message
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect();
    let generic = match (code.is_empty(), message.is_empty()) {
        (_, true) => format!("HTTP {status} {code}").trim().to_string(),
        (true, false) => format!("HTTP {status}: {message}"),
        (false, false) => format!("HTTP {status} {code}: {message}"),
    };
    let (kind, msg) = match (status, code.as_str()) {
        (404, "NoSuchBucket") => (
            StorageKind::Permanent,
            format!("bucket {} does not exist at {}", bucket, endpoint),
        ),
        (404, _) => (StorageKind::NotFound, "not found".to_string()),
        (403, _) | (401, _) => (
            StorageKind::Permanent,
            format!(
                "access denied to bucket {} at {} ({}); check the keys and the bucket's policy",
                bucket,
                endpoint,
                match (code.is_empty(), message.is_empty()) {
                    (true, _) => status.to_string(),
                    (false, true) => code.clone(),
                    (false, false) => format!("{code}: {message}"),
                }
            ),
        ),
        (413, _) => (
            StorageKind::Permanent,
            format!(
                "HTTP 413: {} refused a request body of this size (walsync sends up to 16 MiB per request); \
                 if a proxy stands in front of S3, raise its limit (nginx: client_max_body_size)",
                endpoint
            ),
        ),
        (301 | 307, _) | (400, "AuthorizationHeaderMalformed") if region.is_some() => (
            StorageKind::Permanent,
            format!(
                "bucket {} is in region {} ({} answered HTTP {status} {code}); set AWS_REGION={} (or region in [storage])",
                bucket,
                region.as_deref().unwrap_or(""),
                endpoint,
                region.as_deref().unwrap_or("")
            ),
        ),
        (408, _) | (429, _) | (500..=599, _) => (StorageKind::Transient, generic),
        _ => (StorageKind::Permanent, generic),
    };
    (kind, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_say_what_s3_said() {
        let (k, m) = classify(
            301,
            "<Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access must be addressed using the specified endpoint.</Message></Error><Region>eu-west-1</Region>",
            "b",
            "https://s3.us-east-1.amazonaws.com",
        );
        assert_eq!(k, StorageKind::Permanent);
        assert_eq!(m, "bucket b is in region eu-west-1 (https://s3.us-east-1.amazonaws.com answered HTTP 301 PermanentRedirect); set AWS_REGION=eu-west-1 (or region in [storage])");
        let (k, m) = classify(
            503,
            "<Error><Code>SlowDown</Code><Message>Please reduce\n your request rate.</Message></Error>",
            "b",
            "e",
        );
        assert_eq!(k, StorageKind::Transient);
        assert_eq!(m, "HTTP 503 SlowDown: Please reduce your request rate.");
        let (_, m) = classify(400, "", "b", "e");
        assert_eq!(m, "HTTP 400");
        // Servers name the bucket's region on every answer: only a redirect means "wrong".
        let (_, m) = classify(
            400,
            "<Error><Code>InvalidDigest</Code><Message>bad digest</Message></Error><Region>us-east-1</Region>",
            "b",
            "e",
        );
        assert_eq!(m, "HTTP 400 InvalidDigest: bad digest");
        // A refusal keeps S3's own reason: a bucket policy is not a wrong key.
        let (k, m) = classify(
            403,
            "<Error><Code>AccessDenied</Code><Message>User: arn:aws:iam::1:user/x is not authorized to perform: s3:PutObject with an explicit deny in a resource-based policy</Message></Error>",
            "b",
            "e",
        );
        assert_eq!(k, StorageKind::Permanent);
        assert_eq!(m, "access denied to bucket b at e (AccessDenied: User: arn:aws:iam::1:user/x is not authorized to perform: s3:PutObject with an explicit deny in a resource-based policy); check the keys and the bucket's policy");
    }
}
