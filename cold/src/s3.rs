//! S3 and Backblaze B2 (through its S3-compatible endpoint), with aws-sdk-s3. Archived classes
//! (GLACIER, DEEP_ARCHIVE) need RestoreObject before GetObject; HeadObject's x-amz-restore
//! header tells when the restored copy is readable. B2 keeps everything online.
//!
//! Verification differs by kind: S3 gets a CRC32 with every PutObject (x-amz-checksum-crc32)
//! and returns it from HeadObject. B2's S3-compatible API refuses every `x-amz-checksum-*`
//! header, so for B2 the SDK's automatic checksums are off, PutObject carries Content-MD5 (B2
//! checks it and refuses a mismatch) and HeadObject's ETag (the MD5 of a single-part object)
//! is compared with it.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, GlacierJobParameters, RestoreRequest, Tier,
};
use base64::Engine;
use bytes::Bytes;
use strata_cluster::tier::{RestoreTier, StorageClass};

use super::{
    BackendConfig, BackendKind, ColdError, ColdObject, ColdStore, PutReceipt, configured_class,
};

pub struct S3Store {
    name: String,
    kind: BackendKind,
    client: Client,
    bucket: String,
    prefix: String,
    class: StorageClass,
}

fn sdk_class(c: StorageClass) -> aws_sdk_s3::types::StorageClass {
    use aws_sdk_s3::types::StorageClass as S;
    match c {
        StorageClass::Standard => S::Standard,
        StorageClass::GlacierIr => S::GlacierIr,
        StorageClass::Glacier => S::Glacier,
        StorageClass::DeepArchive => S::DeepArchive,
    }
}

/// Turns an SDK error into ours, keeping the service's error code.
fn err<E, R>(object: &str, op: &str, e: aws_sdk_s3::error::SdkError<E, R>) -> ColdError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.code() {
        Some("NoSuchKey") | Some("NotFound") => ColdError::NotFound(object.to_owned()),
        Some("InvalidObjectState") => ColdError::NotRestored(object.to_owned()),
        _ => ColdError::Backend(format!("{op} {object}: {}", DisplayErrorContext(&e))),
    }
}

impl S3Store {
    pub async fn open(b: &BackendConfig) -> S3Store {
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(b.region.clone()));
        if !b.access_key_id.is_empty() {
            loader = loader.credentials_provider(Credentials::new(
                b.access_key_id.clone(),
                b.secret_access_key.clone(),
                None,
                None,
                "strata-config",
            ));
        }
        let shared = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&shared).force_path_style(b.path_style);
        if b.kind == BackendKind::B2 {
            // B2 refuses x-amz-checksum-* headers (and the SDK sends them by default).
            use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
            conf = conf
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        if !b.endpoint.is_empty() {
            conf = conf.endpoint_url(b.endpoint.clone());
        }
        S3Store {
            name: b.name.clone(),
            kind: b.kind,
            client: Client::from_conf(conf.build()),
            bucket: b.bucket.clone(),
            prefix: b.prefix.clone(),
            class: configured_class(b),
        }
    }

    fn key(&self, object: &str) -> String {
        format!("{}{object}", self.prefix)
    }
}

/// Reads S3's x-amz-restore header (in `strata_cluster::tier`, where the fuzz targets reach
/// it).
pub use strata_cluster::tier::parse_restore_header;

#[async_trait::async_trait]
impl ColdStore for S3Store {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        match self.kind {
            BackendKind::B2 => "b2",
            _ => "s3",
        }
    }

    fn default_class(&self) -> StorageClass {
        self.class
    }

    fn supports(&self, class: StorageClass) -> bool {
        self.kind != BackendKind::B2 || class == StorageClass::Standard
    }

    async fn put(
        &self,
        object: &str,
        body: Bytes,
        crc32: u32,
        class: StorageClass,
    ) -> Result<PutReceipt, ColdError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(object))
            .content_length(body.len() as i64);
        let mut receipt = PutReceipt::default();
        if self.kind == BackendKind::B2 {
            // B2 has one class and refuses the storage-class and checksum headers.
            let hashed = body.clone();
            let md5 = tokio::task::spawn_blocking(move || {
                use md5::Digest;
                <[u8; 16]>::from(md5::Md5::digest(&hashed))
            })
            .await
            .map_err(|e| ColdError::Backend(format!("hashing {object}: {e}")))?;
            req = req.content_md5(base64::engine::general_purpose::STANDARD.encode(md5));
            receipt.md5 = Some(md5);
        } else {
            let crc = base64::engine::general_purpose::STANDARD.encode(crc32.to_be_bytes());
            req = req
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .checksum_crc32(crc)
                .storage_class(sdk_class(class));
        }
        req.body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| err(object, "PutObject", e))?;
        Ok(receipt)
    }

    async fn head(&self, object: &str) -> Result<ColdObject, ColdError> {
        let mut req = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.key(object));
        if self.kind != BackendKind::B2 {
            req = req.checksum_mode(ChecksumMode::Enabled);
        }
        let out = req.send().await.map_err(|e| err(object, "HeadObject", e))?;
        let class = out
            .storage_class()
            .and_then(|c| StorageClass::parse(c.as_str()))
            .unwrap_or(StorageClass::Standard);
        let crc32 = out
            .checksum_crc32()
            .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
            .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
            .map(u32::from_be_bytes);
        Ok(ColdObject {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            class,
            restore: parse_restore_header(class, out.restore()),
            crc32,
            md5: out.e_tag().and_then(etag_md5),
        })
    }

    async fn restore(&self, object: &str, tier: RestoreTier, days: u32) -> Result<(), ColdError> {
        let tier = match tier {
            RestoreTier::Expedited => Tier::Expedited,
            RestoreTier::Standard => Tier::Standard,
            RestoreTier::Bulk => Tier::Bulk,
        };
        let params = GlacierJobParameters::builder()
            .tier(tier)
            .build()
            .map_err(|e| ColdError::Backend(e.to_string()))?;
        let request = RestoreRequest::builder()
            .days(days.max(1) as i32)
            .glacier_job_parameters(params)
            .build();
        match self
            .client
            .restore_object()
            .bucket(&self.bucket)
            .key(self.key(object))
            .restore_request(request)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("RestoreAlreadyInProgress") => Ok(()),
            Err(e) => Err(err(object, "RestoreObject", e)),
        }
    }

    async fn get_range(&self, object: &str, offset: u64, len: u64) -> Result<Bytes, ColdError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(object))
            .range(format!("bytes={offset}-{}", offset + len - 1))
            .send()
            .await
            .map_err(|e| err(object, "GetObject", e))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| ColdError::Backend(format!("GetObject {object}: {e}")))?
            .into_bytes();
        if body.len() as u64 != len {
            return Err(ColdError::Backend(format!(
                "GetObject {object}: {} bytes returned, {len} asked for",
                body.len()
            )));
        }
        Ok(body)
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, i64)>, ColdError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        while out.len() < limit {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.key(prefix))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| err(prefix, "ListObjectsV2", e))?;
            for o in page.contents() {
                let Some(name) = o.key().and_then(|k| k.strip_prefix(self.prefix.as_str())) else {
                    continue;
                };
                let modified = o
                    .last_modified()
                    .and_then(|t| t.to_millis().ok())
                    .unwrap_or(0);
                out.push((name.to_owned(), modified));
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn delete(&self, object: &str) -> Result<(), ColdError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(object))
            .send()
            .await
            .map_err(|e| err(object, "DeleteObject", e))?;
        Ok(())
    }
}

/// The MD5 in an ETag (`"<32 hex digits>"`); None for a multipart ETag (`"...-N"`).
pub fn etag_md5(etag: &str) -> Option<[u8; 16]> {
    let hex = etag.trim().trim_matches('"');
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RestoreStatus;

    #[test]
    fn etags() {
        let md5 = etag_md5("\"9e107d9d372bb6826bd81d3542a419d6\"").expect("single part");
        assert_eq!(md5[0], 0x9e);
        assert_eq!(md5[15], 0xd6);
        assert_eq!(etag_md5("\"9e107d9d372bb6826bd81d3542a419d6-3\""), None);
        assert_eq!(etag_md5("\"xyz\""), None);
    }

    #[test]
    fn restore_header() {
        let g = StorageClass::Glacier;
        assert_eq!(parse_restore_header(g, None), RestoreStatus::NotRequested);
        assert_eq!(
            parse_restore_header(g, Some("ongoing-request=\"true\"")),
            RestoreStatus::InProgress
        );
        assert_eq!(
            parse_restore_header(
                g,
                Some("ongoing-request=\"false\", expiry-date=\"Fri, 21 Dec 2012 00:00:00 GMT\"")
            ),
            RestoreStatus::Ready
        );
        assert_eq!(
            parse_restore_header(StorageClass::GlacierIr, None),
            RestoreStatus::NotNeeded
        );
    }
}
