//! The analyst API over HTTPS with client certificates (mTLS), against `vigil serve` and the
//! real broker: certificates made by the `openssl` tool (a CA, the server on 127.0.0.1, a
//! listed client, a client of another CA). A listed client certificate authenticates with its
//! roles; none falls back to a bearer credential (or is refused when required); another CA's
//! certificate, or plain HTTP, never gets an answer.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use sha2::Digest;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and certificates it signs: `<name>.pem` / `<name>.key`.
fn ca(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
        ],
    );
}

fn signed(dir: &Path, ca: &str, name: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

const CLIENT_EXT: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n";

fn client(dir: &Path, ca_pem: &[u8], identity: Option<&str>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap());
    if let Some(name) = identity {
        let mut pem = std::fs::read(dir.join(format!("{name}.pem"))).unwrap();
        pem.extend(std::fs::read(dir.join(format!("{name}.key"))).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

fn fingerprint(dir: &Path, name: &str) -> String {
    openssl(
        dir,
        &[
            "x509",
            "-in",
            &format!("{name}.pem"),
            "-outform",
            "der",
            "-out",
            &format!("{name}.der"),
        ],
    );
    hex::encode(sha2::Sha256::digest(
        std::fs::read(dir.join(format!("{name}.der"))).unwrap(),
    ))
}

#[test]
fn client_certificates_authenticate_and_nothing_else_gets_through() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ca(d, "ca");
    ca(d, "other-ca");
    signed(
        d,
        "ca",
        "server",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    );
    signed(d, "ca", "grafana", CLIENT_EXT);
    signed(d, "other-ca", "intruder", CLIENT_EXT);
    let key = "vk_tls_reader_0123456789";
    let config = |required: bool| {
        let path = d.join(format!("vigil-{required}.toml"));
        std::fs::write(
            &path,
            format!(
                "[api]\ntls_cert_file = \"{0}/server.pem\"\ntls_key_file = \"{0}/server.key\"\n\
                 tls_client_ca_file = \"{0}/ca.pem\"\ntls_client_required = {required}\n\
                 [[api.clients]]\nname = \"grafana\"\nsha256 = \"{1}\"\nroles = [\"reader\"]\n\
                 [[api.keys]]\nname = \"k\"\nsha256 = \"{2}\"\nroles = [\"reader\"]\n",
                d.display(),
                fingerprint(d, "grafana"),
                hex::encode(sha2::Sha256::digest(key.as_bytes()))
            ),
        )
        .unwrap();
        path
    };
    let ca_pem = std::fs::read(d.join("ca.pem")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let get = |c: &reqwest::Client, url: &str, bearer: Option<&str>| {
        rt.block_on(async {
            let mut r = c.get(url);
            if let Some(b) = bearer {
                r = r.bearer_auth(b);
            }
            r.send().await.map(|r| r.status().as_u16())
        })
    };

    let broker = Broker::start();
    broker.create_topic("mesh", 1);
    let dir = d.join("data");
    let listed = client(d, &ca_pem, Some("grafana"));
    // `serve` over TLS, with client certificates optional or required; once it answers.
    let start = |required: bool| {
        let s = serve_with(
            &broker,
            "mesh",
            &dir,
            "g-tls",
            &[],
            Some(&config(required)),
            &[],
        );
        let base = format!("https://{}", s.api);
        wait_for("the API over TLS", Duration::from_secs(60), || {
            get(&listed, &format!("{base}/healthz"), None).ok()
        });
        (s, base)
    };
    let (s, base) = start(false);
    let alerts = format!("{base}/v1/alerts");
    assert_eq!(
        get(&listed, &alerts, None).unwrap(),
        200,
        "a listed client certificate"
    );
    let anonymous = client(d, &ca_pem, None);
    assert_eq!(
        get(&anonymous, &alerts, None).unwrap(),
        401,
        "no certificate, no credential"
    );
    assert_eq!(
        get(&anonymous, &alerts, Some(key)).unwrap(),
        200,
        "no certificate, a key"
    );
    let intruder = client(d, &ca_pem, Some("intruder"));
    assert!(
        get(&intruder, &alerts, None).is_err(),
        "another CA's certificate"
    );
    let plain = get(
        &reqwest::Client::new(),
        &format!("http://{}/v1/alerts", s.api),
        Some(key),
    );
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    // Who called is recorded as the certificate's name.
    let v: serde_json::Value = rt.block_on(async {
        listed
            .post(format!("{base}/v1/query"))
            .json(&serde_json::json!({"sql": "SELECT DISTINCT caller_principal FROM events WHERE kafka_topic = 'vigil.api' ORDER BY 1"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|r| r["caller_principal"] == "cert:grafana"),
        "{v}"
    );
    assert!(s.terminate());

    // Required: no certificate, no connection.
    let (s, base) = start(true);
    assert_eq!(
        get(&listed, &format!("{base}/v1/alerts"), None).unwrap(),
        200
    );
    assert!(
        get(&anonymous, &format!("{base}/v1/alerts"), Some(key)).is_err(),
        "required"
    );
    assert!(s.terminate());
}
