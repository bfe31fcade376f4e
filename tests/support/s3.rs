//! A real S3-compatible server on a free loopback port: moto in server mode (installed by
//! scripts/install.sh), a bucket per test, what `vigil` needs to reach it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_for};

/// `VIGIL_MOTO_BIN` (set by scripts/test.sh), else the install script's cache, else `PATH`.
fn moto_bin() -> PathBuf {
    if let Ok(p) = std::env::var("VIGIL_MOTO_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cached = PathBuf::from(home).join(".cache/vigil/moto-5.2.1/bin/moto_server");
    if cached.exists() {
        return cached;
    }
    PathBuf::from("moto_server")
}

pub struct S3Server {
    child: Child,
    pub addr: String,
    _log: tempfile::NamedTempFile,
}

impl S3Server {
    pub fn start() -> S3Server {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(moto_bin())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start moto_server (run scripts/install.sh, or set VIGIL_MOTO_BIN)");
        let addr = format!("127.0.0.1:{port}");
        let s = S3Server {
            child,
            addr,
            _log: log,
        };
        wait_for("the S3 server to answer", Duration::from_secs(60), || {
            s.request("GET", "/", &[]).ok()
        });
        s
    }

    /// The process id (to stop and continue it: a bucket that does not answer).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One HTTP/1.1 request, unsigned (moto does not check signatures): status and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<(u16, String)> {
        let mut c = TcpStream::connect(&self.addr)?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n",
            self.addr
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        c.write_all(req.as_bytes())?;
        let mut out = String::new();
        c.read_to_string(&mut out)?;
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {out:?}")))?;
        Ok((status, out))
    }

    /// Create a bucket (`object_lock`: with S3 Object Lock enabled).
    pub fn create_bucket(&self, name: &str, object_lock: bool) {
        let lock = [("x-amz-bucket-object-lock-enabled", "true")];
        let headers: &[(&str, &str)] = if object_lock { &lock } else { &[] };
        let (status, body) = self.request("PUT", &format!("/{name}"), headers).unwrap();
        assert_eq!(status, 200, "create bucket {name}: {body}");
    }

    /// The object keys under `prefix` in `bucket` (ListObjectsV2, up to 1000).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (status, body) = self
            .request(
                "GET",
                &format!("/{bucket}?list-type=2&prefix={prefix}"),
                &[],
            )
            .unwrap();
        assert_eq!(status, 200, "list {bucket}: {body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_owned()))
            .collect()
    }

    /// A client of the store at `url` (`s3://…`) on this server, as `vigil` makes one: what
    /// an attacker holding the bucket's credentials can do with it (moto refuses unsigned
    /// deletes).
    pub fn client(&self, url: &str) -> vigil_store::Bucket {
        let url = vigil_store::BucketUrl::parse(url).unwrap().unwrap();
        let opts = vigil_store::BucketOptions {
            aws_settings: vec![
                ("AWS_ACCESS_KEY_ID".into(), "vigil-test".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "vigil-test".into()),
            ],
            endpoint: Some(format!("http://{}", self.addr)),
            region: Some("us-east-1".into()),
            allow_http: true,
            request_timeout_ms: 10_000,
            retry_timeout_ms: 10_000,
            object_lock_days: 0,
        };
        vigil_store::Bucket::open(&url, &opts).unwrap()
    }

    /// Run a Python script with boto3 (AWS's own S3 client, which moto's virtual environment
    /// holds) against this server: `S3` in the script is a client of it. Returns stdout.
    pub fn boto3(&self, script: &str) -> String {
        let bin = moto_bin();
        let python = bin
            .parent()
            .map(|d| d.join("python3"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("python3"));
        let prelude = format!(
            "import boto3\nS3 = boto3.client('s3', endpoint_url='http://{}', \
             aws_access_key_id='vigil-test', aws_secret_access_key='vigil-test', \
             region_name='us-east-1')\n",
            self.addr
        );
        let out = Command::new(python)
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "boto3 script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The environment `vigil` reaches this server with: endpoint, plain HTTP, test
    /// credentials (moto accepts any), a region.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "VIGIL_STORE__S3_ENDPOINT".into(),
                format!("http://{}", self.addr),
            ),
            ("VIGIL_STORE__S3_ALLOW_HTTP".into(), "true".into()),
            ("VIGIL_STORE__S3_REGION".into(), "us-east-1".into()),
            // Short retries: a test of the server being away sets its own.
            ("VIGIL_STORE__S3_RETRY_TIMEOUT_MS".into(), "10000".into()),
            ("AWS_ACCESS_KEY_ID".into(), "vigil-test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "vigil-test".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
