//! Volume backups in an S3-compatible bucket (`berth server --backup-url
//! s3://bucket/prefix`, `--backup-s3-endpoint`, `--backup-s3-region`).
//!
//! Requests are signed with AWS Signature V4 presigned URLs
//! (`rusty_s3`) and sent with hyper. The credentials are the secrets
//! [`ACCESS_KEY_ID`] and [`SECRET_ACCESS_KEY`] of the backed-up volume's
//! environment (sealed in the store like every secret); they must be set
//! as secrets, are read only when a request is made, and never appear in
//! a message, a log line or an API answer (nor does a signed URL).
//!
//! An archive is one object, `<prefix>/<project>/<environment>/<volume>/
//! <backup-id>.tar.gz` (one PUT, so at most 5 GiB); its backup record's
//! location is `s3://<bucket>/<key>`.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use tokio::io::AsyncWriteExt;

/// The secret holding the access key id.
pub const ACCESS_KEY_ID: &str = "BERTH_BACKUP_S3_ACCESS_KEY_ID";
/// The secret holding the secret access key.
pub const SECRET_ACCESS_KEY: &str = "BERTH_BACKUP_S3_SECRET_ACCESS_KEY";

/// Region when `--backup-s3-region` is not given.
pub const DEFAULT_REGION: &str = "us-east-1";

/// How long a signed URL is valid.
const SIGNED_FOR: Duration = Duration::from_secs(3600);
/// Longest wait for the next piece of an answer.
const IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("invalid --backup-url {0:?}: {1}")]
    BadUrl(String, String),
    #[error("invalid --backup-s3-endpoint {0:?}: {1}")]
    BadEndpoint(String, String),
    #[error("{0}")]
    Credentials(String),
    #[error("{0}")]
    Request(String),
    /// The bucket answered 404: the object (or the bucket) is not there.
    #[error("{0}")]
    Missing(String),
}

/// Where backups go: the bucket and the key prefix.
#[derive(Clone, Debug)]
pub struct BackupTarget {
    bucket: Bucket,
    prefix: String,
}

impl BackupTarget {
    /// `s3://bucket[/prefix]`, the endpoint (default: AWS's of the region,
    /// virtual-host style; a given endpoint is addressed path style, as
    /// MinIO and most compatible servers expect) and the region.
    pub fn parse(
        url: &str,
        endpoint: Option<&str>,
        region: Option<&str>,
    ) -> Result<BackupTarget, S3Error> {
        let bad = |why: &str| S3Error::BadUrl(url.to_owned(), why.to_owned());
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it must start with s3://"))?;
        let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_name = (3..=63).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !name.starts_with(['-', '.'])
            && !name.ends_with(['-', '.']);
        if !valid_name {
            return Err(bad(
                "the bucket name must be 3 to 63 lowercase letters, digits, dots or hyphens",
            ));
        }
        let prefix = prefix.trim_matches('/').to_owned();
        if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
            return Err(bad("the prefix must not hold empty, . or .. segments"));
        }
        let region = region
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .unwrap_or(DEFAULT_REGION)
            .to_owned();
        let (endpoint_url, style) = match endpoint.map(str::trim).filter(|e| !e.is_empty()) {
            Some(e) => {
                let u = url::Url::parse(e)
                    .map_err(|err| S3Error::BadEndpoint(e.to_owned(), err.to_string()))?;
                if !u.username().is_empty() || u.password().is_some() {
                    return Err(S3Error::BadEndpoint(
                        e.to_owned(),
                        "credentials go in the secrets, not in the URL".into(),
                    ));
                }
                (u, UrlStyle::Path)
            }
            None => (
                url::Url::parse(&format!("https://s3.{region}.amazonaws.com"))
                    .map_err(|err| S3Error::BadUrl(url.to_owned(), err.to_string()))?,
                UrlStyle::VirtualHost,
            ),
        };
        let shown = endpoint_url.to_string();
        let bucket = Bucket::new(endpoint_url, style, name.to_owned(), region)
            .map_err(|e| S3Error::BadEndpoint(shown, format!("{e:?}").to_lowercase()))?;
        Ok(BackupTarget { bucket, prefix })
    }

    /// The object key of a backup's archive.
    pub fn key(&self, project: &str, environment: &str, volume: &str, id: &str) -> String {
        let tail = format!("{project}/{environment}/{volume}/{id}.tar.gz");
        if self.prefix.is_empty() {
            tail
        } else {
            format!("{}/{tail}", self.prefix)
        }
    }

    /// `s3://<bucket>/<key>`.
    pub fn location(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket.name())
    }

    /// The key a location names, when it is in this target's bucket.
    pub fn key_of<'a>(&self, location: &'a str) -> Option<&'a str> {
        location
            .strip_prefix("s3://")?
            .strip_prefix(self.bucket.name())?
            .strip_prefix('/')
    }
}

/// Whether a backup location is an object (not a file).
pub fn is_object(location: &str) -> bool {
    location.starts_with("s3://")
}

/// The credentials of an environment: its two secrets.
pub fn credentials(vars: &[berth_store::ResolvedVar]) -> Result<Credentials, S3Error> {
    let get = |key: &str| -> Result<String, S3Error> {
        match vars.iter().find(|v| v.key == key) {
            Some(v) if !v.secret => Err(S3Error::Credentials(format!(
                "{key} is a plain variable: set it as a secret (berth env set --secret)"
            ))),
            Some(v) if !v.value.is_empty() => Ok(v.value.clone()),
            _ => Err(S3Error::Credentials(format!(
                "backups go to S3 (--backup-url) and the secret {key} is not set in this environment"
            ))),
        }
    };
    Ok(Credentials::new(
        get(ACCESS_KEY_ID)?,
        get(SECRET_ACCESS_KEY)?,
    ))
}

type Body = BoxBody<Bytes, std::io::Error>;
type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Body,
>;

fn client() -> Result<Client, S3Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| S3Error::Request(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

/// An error with its causes (never a URL: signed URLs stay inside).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let m = src.to_string();
        if !msg.contains(&m) {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        cur = src.source();
    }
    msg
}

/// The S3 error code of an error answer (`<Code>...</Code>`), if any.
fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = text[start..].find("</Code>")? + start;
    Some(text[start..end].chars().take(80).collect())
}

/// Sends one request; an answer other than 2xx is an error naming the
/// operation, the object and the status (and S3's error code).
async fn send(
    what: &str,
    req: http::Request<Body>,
) -> Result<http::Response<hyper::body::Incoming>, S3Error> {
    let client = client()?;
    let resp = tokio::time::timeout(IDLE, client.request(req))
        .await
        .map_err(|_| S3Error::Request(format!("{what}: no answer in {}s", IDLE.as_secs())))?
        .map_err(|e| S3Error::Request(format!("{what}: {}", causes(&e))))?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .ok()
        .and_then(|b| b.ok())
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let msg = match error_code(&body) {
        Some(code) => format!("{what}: HTTP {status} ({code})"),
        None => format!("{what}: HTTP {status}"),
    };
    Err(if status == http::StatusCode::NOT_FOUND {
        S3Error::Missing(msg)
    } else {
        S3Error::Request(msg)
    })
}

fn request(
    method: http::Method,
    url: url::Url,
    body: Body,
) -> Result<http::Request<Body>, S3Error> {
    http::Request::builder()
        .method(method)
        .uri(url.as_str())
        .body(body)
        .map_err(|e| S3Error::Request(e.to_string()))
}

fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

impl BackupTarget {
    /// Uploads the file at `path` as `key`.
    pub async fn put_file(
        &self,
        creds: &Credentials,
        key: &str,
        path: &Path,
    ) -> Result<(), S3Error> {
        let what = format!("cannot upload {}", self.location(key));
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| S3Error::Request(format!("{what}: {e}")))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| S3Error::Request(format!("{what}: {e}")))?
            .len();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)
            .map_ok(http_body::Frame::data);
        let body = BodyExt::boxed(StreamBody::new(stream));
        let url = self.bucket.put_object(Some(creds), key).sign(SIGNED_FOR);
        let mut req = request(http::Method::PUT, url, body)?;
        req.headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        send(&what, req).await?;
        Ok(())
    }

    /// Downloads `key` into a new file at `path`; returns its size.
    pub async fn get_file(
        &self,
        creds: &Credentials,
        key: &str,
        path: &Path,
    ) -> Result<u64, S3Error> {
        let what = format!("cannot download {}", self.location(key));
        let url = self.bucket.get_object(Some(creds), key).sign(SIGNED_FOR);
        let resp = send(&what, request(http::Method::GET, url, empty())?).await?;
        let mut file = crate::backups::create_private_async(path)
            .await
            .map_err(|e| S3Error::Request(format!("{what}: {e}")))?;
        let mut body = resp.into_body();
        let mut size = 0u64;
        loop {
            let frame = tokio::time::timeout(IDLE, body.frame())
                .await
                .map_err(|_| S3Error::Request(format!("{what}: the answer stalled")))?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| S3Error::Request(format!("{what}: {}", causes(&e))))?;
            if let Ok(data) = frame.into_data() {
                size += data.len() as u64;
                file.write_all(&data)
                    .await
                    .map_err(|e| S3Error::Request(format!("{what}: {e}")))?;
            }
        }
        file.sync_all()
            .await
            .map_err(|e| S3Error::Request(format!("{what}: {e}")))?;
        Ok(size)
    }

    /// Removes `key` (gone already is fine).
    pub async fn delete(&self, creds: &Credentials, key: &str) -> Result<(), S3Error> {
        let what = format!("cannot remove {}", self.location(key));
        let url = self.bucket.delete_object(Some(creds), key).sign(SIGNED_FOR);
        send(&what, request(http::Method::DELETE, url, empty())?).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(key: &str, value: &str, secret: bool) -> berth_store::ResolvedVar {
        berth_store::ResolvedVar {
            key: key.into(),
            value: value.into(),
            secret,
            build: false,
        }
    }

    #[test]
    fn parses_the_target_and_names_objects() {
        let t = BackupTarget::parse(
            "s3://berth-backups/site/a/",
            Some("http://127.0.0.1:9000"),
            None,
        )
        .unwrap();
        let key = t.key("shop", "production", "uploads", "b1");
        assert_eq!(key, "site/a/shop/production/uploads/b1.tar.gz");
        let loc = t.location(&key);
        assert_eq!(
            loc,
            "s3://berth-backups/site/a/shop/production/uploads/b1.tar.gz"
        );
        assert_eq!(t.key_of(&loc), Some(key.as_str()));
        assert_eq!(t.key_of("s3://other-bucket/x"), None);
        assert!(is_object(&loc) && !is_object("/var/lib/berth/backups/x.tar.gz"));
        assert_eq!(
            t.bucket.object_url(&key).as_str(),
            "http://127.0.0.1:9000/berth-backups/site/a/shop/production/uploads/b1.tar.gz"
        );
        let aws = BackupTarget::parse("s3://bucket1", None, Some("eu-west-3")).unwrap();
        assert_eq!(aws.key("p", "e", "v", "i"), "p/e/v/i.tar.gz");
        assert_eq!(
            aws.bucket.object_url("k").as_str(),
            "https://bucket1.s3.eu-west-3.amazonaws.com/k"
        );
    }

    #[test]
    fn refuses_bad_targets_with_the_reason() {
        for (url, endpoint, want) in [
            ("https://bucket/x", None, "must start with s3://"),
            ("s3://B", None, "bucket name"),
            ("s3://ok-bucket/a/../b", None, "prefix"),
            ("s3://ok-bucket", Some("ftp://h"), "--backup-s3-endpoint"),
            ("s3://ok-bucket", Some("not a url"), "--backup-s3-endpoint"),
            ("s3://ok-bucket", Some("http://k:s@h:9000"), "secrets"),
        ] {
            let e = BackupTarget::parse(url, endpoint, None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{url} {endpoint:?}: {e}");
            assert_eq!(e.lines().count(), 1);
        }
    }

    #[test]
    fn credentials_are_secrets_of_the_environment() {
        let ok = credentials(&[
            var(ACCESS_KEY_ID, "AKID", true),
            var(SECRET_ACCESS_KEY, "shh-very-secret", true),
        ])
        .unwrap();
        assert_eq!(ok.key(), "AKID");
        assert!(!format!("{ok:?}").contains("shh-very-secret"));
        let e = credentials(&[var(ACCESS_KEY_ID, "AKID", true)]).unwrap_err();
        assert!(e.to_string().contains(SECRET_ACCESS_KEY), "{e}");
        let e = credentials(&[
            var(ACCESS_KEY_ID, "AKID", true),
            var(SECRET_ACCESS_KEY, "plain-text", false),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("set it as a secret") && !e.contains("plain-text"),
            "{e}"
        );
    }

    #[test]
    fn reads_the_error_code_of_an_answer() {
        let body =
            b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>x</Message></Error>";
        assert_eq!(error_code(body).as_deref(), Some("NoSuchKey"));
        assert_eq!(error_code(b"plain"), None);
    }
}
