//! The analyst API of `vigil serve` over real HTTP (reqwest), against the real broker: every
//! route × every role (401 without credentials, 403 with the wrong role, through with the
//! right one), token attacks, SQL in every format and the sandbox's refusals, the alert
//! lifecycle, and the audit trail: every call in Vigil's own log, queryable, verified, and
//! repeated refusals detected by Vigil's own rule.
//!
//! One file past 600 lines: its main test is one long scenario against one `vigil serve` (keys,
//! tokens, data and audit trail build on each other), with the token and key helpers it needs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "vigil-api";
const HS_SECRET: &str = "an HS256 secret of more than 32 bytes, for tests";

/// An RSA key pair from the `openssl` tool: the private key PEM and the public JWK.
fn rsa_key(dir: &Path) -> (Vec<u8>, Value, Vec<u8>) {
    let key = dir.join("rsa.pem");
    let ok = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl genrsa");
    let out = Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    let modulus = String::from_utf8(out.stdout).unwrap();
    let n = hex::decode(modulus.trim().trim_start_matches("Modulus=")).unwrap();
    let public_pem = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap()
        .stdout;
    let jwk = json!({"kty": "RSA", "kid": "rsa1", "alg": "RS256", "use": "sig",
        "n": b64(&n), "e": "AQAB"});
    (std::fs::read(&key).unwrap(), jwk, public_pem)
}

/// A P-256 key pair: PKCS#8 DER and the public JWK.
fn ec_key() -> (Vec<u8>, Value) {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let p = pair.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "ec1", "alg": "ES256", "use": "sig",
        "x": b64(&p[1..33]), "y": b64(&p[33..65])});
    (pkcs8.as_ref().to_vec(), jwk)
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(roles: &[&str]) -> Value {
    json!({"sub": "ana", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "roles": roles})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

struct Client {
    base: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// A client of `serve`'s API, once it answers.
    fn connect(s: &Serve) -> Client {
        let c = Client {
            base: format!("http://{}", s.api),
            http: reqwest::Client::new(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        };
        wait_for("the API", Duration::from_secs(60), || {
            (c.rt
                .block_on(c.http.get(format!("{}/healthz", c.base)).send())
                .is_ok())
            .then_some(())
        });
        c
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Vec<u8>) {
        let url = format!("{}{path}", self.base);
        let mut r = match method {
            "GET" => self.http.get(&url),
            _ => self.http.post(&url),
        };
        if let Some(a) = auth {
            r = r.header("authorization", format!("Bearer {a}"));
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        self.rt.block_on(async {
            let resp = r.send().await.unwrap();
            let status = resp.status();
            (status, resp.bytes().await.unwrap().to_vec())
        })
    }

    fn json(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (s, b) = self.call(method, path, auth, body);
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    fn post_raw(
        &self,
        path: &str,
        auth: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {auth}"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        self.rt.block_on(async {
            let resp = r.body(body).send().await.unwrap();
            let status = resp.status();
            let b = resp.bytes().await.unwrap();
            (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
        })
    }

    fn sql(&self, key: &str, sql: &str) -> Vec<Value> {
        let (s, v) = self.json("POST", "/v1/query", Some(key), Some(json!({"sql": sql})));
        assert_eq!(s, StatusCode::OK, "{sql}: {v}");
        v.as_array().unwrap().clone()
    }
}

#[test]
fn routes_roles_tokens_sql_lifecycle_and_the_audit_trail() {
    let tmp = tempfile::tempdir().unwrap();
    let (rsa_pem, rsa_jwk, rsa_public_pem) = rsa_key(tmp.path());
    let (ec_der, ec_jwk) = ec_key();
    let jwks = tmp.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [rsa_jwk, ec_jwk]}).to_string()).unwrap();
    let keys = [
        ("reader", "vk_reader_0123456789"),
        ("analyst", "vk_analyst_0123456789"),
        ("ingestor", "vk_ingestor_0123456789"),
        ("admin", "vk_admin_0123456789"),
    ];
    let mut config = format!(
        "[api]\nmax_rows = 500\njwt_issuer = \"{ISSUER}\"\njwt_audience = \"{AUDIENCE}\"\n\
         jwt_hs256_secret_env = \"TEST_JWT_SECRET\"\njwt_jwks_file = \"{}\"\njwt_leeway_s = 0\n",
        jwks.display()
    );
    for (role, key) in keys {
        config.push_str(&api_key_entry(role, key, &[role]));
    }
    let rules_dir = tmp.path().join("rules");
    std::fs::create_dir(&rules_dir).unwrap();
    config.push_str(&format!(
        "[detect]\nrules_dir = \"{}\"\n",
        rules_dir.display()
    ));
    let config_path = tmp.path().join("vigil.toml");
    std::fs::write(&config_path, config).unwrap();

    let broker = Broker::start();
    broker.create_topic("mesh", 1);
    broker.create_topic("vigil.checkpoints", 1);
    let dir = tmp.path().join("data");
    let s = serve_with(
        &broker,
        "mesh",
        &dir,
        "g-api",
        &[("TEST_JWT_SECRET", HS_SECRET)],
        Some(&config_path),
        &[],
    );
    let c = Client::connect(&s);
    // 60 denials from one address: an alert to manage.
    let now_t = chrono::Utc::now();
    let recs: Vec<Rec> = (0..60)
        .map(|i| Rec {
            partition: 0,
            key: None,
            value: Some(format!(
                r#"{{"decision_id":"a{i}","result":false,"timestamp":"{}","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"203.0.113.7","portValue":1}}}}}},"request":{{"http":{{"method":"POST","path":"/login"}}}}}}}}}}"#,
                (now_t + chrono::Duration::milliseconds(i)).to_rfc3339()
            ).into_bytes()),
            headers: Vec::new(),
        })
        .collect();
    produce(&broker.producer(), "mesh", &recs);
    wait_for("ready", Duration::from_secs(60), || {
        (c.call("GET", "/readyz", None, None).0 == StatusCode::OK).then_some(())
    });
    let reader = keys[0].1;
    wait_for("the alert", Duration::from_secs(60), || {
        let (_, v) = c.json("GET", "/v1/alerts", Some(reader), None);
        (v["total"].as_u64() == Some(1)).then_some(())
    });

    let (_, listed) = c.json("GET", "/v1/alerts", Some(reader), None);
    let alert_id = listed["alerts"][0]["alert_id"].as_str().unwrap().to_owned();
    // The same page as OCSF Detection Findings, valid against the 1.8.0 schema.
    let (st, ocsf) = c.json("GET", "/v1/alerts?format=ocsf", Some(reader), None);
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ocsf["total"], 1);
    let f = &ocsf["findings"][0];
    assert_eq!(f["finding_info"]["uid"].as_str(), Some(alert_id.as_str()));
    let errs = Ocsf::load().validate("detection_finding", f);
    assert!(errs.is_empty(), "{errs:#?}\n{f:#}");
    let (st, _) = c.call("GET", "/v1/alerts?format=cef", Some(reader), None);
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // The first record's proofs, once a signed checkpoint holds it.
    wait_for(
        "a signed checkpoint of mesh/0",
        Duration::from_secs(60),
        || {
            let (st, _) = c.call(
                "GET",
                "/v1/proofs/inclusion?log=mesh/0&index=0",
                Some(reader),
                None,
            );
            st.is_success().then_some(())
        },
    );

    // Route × role, for every route the API describes, each called on real resources: none →
    // 401; a role the route does not take → 403; each of its roles gets through to the
    // handler, which does what it is for (2xx) — but for the lifecycle change, which the
    // first role allowed makes and the next ones are refused by the handler as already made.
    let mut calls = 0usize;
    let mut acknowledged = false;
    let routes = vigil_query::api::routes();
    assert!(routes.len() >= 11);
    for r in &routes {
        let method = r.method.to_uppercase();
        let path = match r.path {
            "/v1/proofs/inclusion" => "/v1/proofs/inclusion?log=mesh/0&index=0".to_owned(),
            "/v1/proofs/consistency" => "/v1/proofs/consistency?log=mesh/0&from=60".to_owned(),
            p => p.replace("{id}", &alert_id).replace("{action}", "ack"),
        };
        let body = match r.path {
            "/logs" => Some(json!([{
                "decision_id": "matrix",
                "result": true,
                "timestamp": chrono::Utc::now().to_rfc3339(),
            }])),
            "/v1/alerts/{id}/{action}" => Some(json!({"note": "on it"})),
            _ if method == "POST" => Some(json!({"sql": "SELECT 1"})),
            _ => None,
        };
        let Some(allowed) = r.roles else {
            assert_eq!(
                c.call(&method, &path, None, None).0,
                StatusCode::OK,
                "{path}"
            );
            continue;
        };
        let (st, _) = c.call(&method, &path, None, body.clone());
        assert_eq!(
            st,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without credentials"
        );
        calls += 1;
        for (role, key) in keys {
            let (st, b) = c.call(&method, &path, Some(key), body.clone());
            calls += 1;
            let role = vigil_query::api::auth::Role::parse(role).unwrap();
            if allowed.contains(&role) {
                let text = String::from_utf8_lossy(&b);
                let handled = if r.path == "/v1/alerts/{id}/{action}" && acknowledged {
                    st == StatusCode::CONFLICT && text.contains("already acknowledged")
                } else {
                    acknowledged |= r.path == "/v1/alerts/{id}/{action}";
                    st.is_success()
                };
                assert!(handled, "{method} {path} as {role:?}: {st} {text}");
            } else {
                assert_eq!(st, StatusCode::FORBIDDEN, "{method} {path} as {role:?}");
            }
        }
    }
    // The admin's rotation (in the matrix above) took effect in the running signer: two keys,
    // the first closing after its overlap; the store still verifies at the end.
    let (_, registry) = c.call("GET", "/v1/keys", Some(reader), None);
    calls += 1;
    let registry = String::from_utf8_lossy(&registry).into_owned();
    let keys_listed: Vec<&str> = registry.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(keys_listed.len(), 2, "{registry}");
    assert!(
        !keys_listed[0].ends_with(" -"),
        "the first key closes: {registry}"
    );
    let (_, doc) = c.json("GET", "/openapi.json", Some(reader), None);
    calls += 1;
    for r in &routes {
        assert!(
            doc["paths"][r.path][r.method].is_object(),
            "{} {} undocumented",
            r.method,
            r.path
        );
    }
    // Records by outcome, the lag per partition (once the consumer's statistics came), the
    // flush timings (once the batch is in a file).
    let metrics = wait_for("the lag and flush metrics", Duration::from_secs(30), || {
        let (_, m) = c.call("GET", "/metrics", Some(reader), None);
        let m = String::from_utf8_lossy(&m).into_owned();
        let flushed = m
            .lines()
            .find_map(|l| l.strip_prefix("vigil_flush_seconds_count "))
            .is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n >= 1));
        (flushed && m.contains("vigil_partition_lag_records{topic=\"mesh\",partition=\"0\"} 0"))
            .then_some(m)
    });
    for line in [
        "vigil_records_total{outcome=\"decoded\"} 60",
        "vigil_partition_high_watermark{topic=\"mesh\",partition=\"0\"} ",
        "# TYPE vigil_batch_age_seconds histogram",
        "vigil_batch_age_seconds_bucket{le=\"+Inf\"} ",
        "# TYPE vigil_rule_groups gauge",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    // Tokens: HS256, RS256 and ES256 get in with their roles; every attack is a 401.
    let hs = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let rs = EncodingKey::from_rsa_pem(&rsa_pem).unwrap();
    let es = EncodingKey::from_ec_der(&ec_der);
    let good = [
        sign(Algorithm::HS256, None, &claims(&["reader"]), &hs),
        sign(Algorithm::RS256, Some("rsa1"), &claims(&["reader"]), &rs),
        sign(Algorithm::ES256, Some("ec1"), &claims(&["reader"]), &es),
    ];
    for t in &good {
        let (st, b) = c.call("GET", "/v1/alerts", Some(t), None);
        assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
        calls += 1;
    }
    let with = |f: &dyn Fn(&mut Value)| {
        let mut cl = claims(&["reader"]);
        f(&mut cl);
        sign(Algorithm::RS256, Some("rsa1"), &cl, &rs)
    };
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(&["admin"]).to_string().as_bytes())
    );
    let attacks = vec![
        ("expired", with(&|c| c["exp"] = (now() - 60).into())),
        ("not yet valid", with(&|c| c["nbf"] = (now() + 3600).into())),
        ("wrong audience", with(&|c| c["aud"] = "another-api".into())),
        (
            "wrong issuer",
            with(&|c| c["iss"] = "https://evil.test".into()),
        ),
        (
            "no expiry",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "bad signature",
            sign(
                Algorithm::HS256,
                None,
                &claims(&["reader"]),
                &EncodingKey::from_secret(b"not the secret, but 32 bytes long!!"),
            ),
        ),
        ("alg none", unsigned),
        // The RSA public key used as an HMAC secret, naming the RSA key.
        (
            "HS/RS confusion",
            sign(
                Algorithm::HS256,
                Some("rsa1"),
                &claims(&["admin"]),
                &EncodingKey::from_secret(&rsa_public_pem),
            ),
        ),
        // An ES256 token naming the RSA key.
        (
            "algorithm/key mismatch",
            sign(Algorithm::ES256, Some("rsa1"), &claims(&["reader"]), &es),
        ),
        (
            "unknown kid",
            sign(Algorithm::RS256, Some("nope"), &claims(&["reader"]), &rs),
        ),
        ("oversized", "x".repeat(20_000)),
    ];
    for (what, t) in &attacks {
        let (st, b) = c.call("GET", "/v1/alerts", Some(t), None);
        assert_eq!(
            st,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            String::from_utf8_lossy(&b)
        );
        calls += 1;
    }

    // SQL: every format; DataFusion's message for a bad query; the sandbox's refusals; caps.
    let q =
        "SELECT caller_ip, count(*) AS n FROM events WHERE kafka_topic = 'mesh' GROUP BY caller_ip";
    let rows = c.sql(reader, q);
    calls += 1;
    assert_eq!(rows, vec![json!({"caller_ip": "203.0.113.7", "n": 60})]);
    for (format, check) in [
        ("ndjson", "{\"caller_ip\":\"203.0.113.7\",\"n\":60}\n"),
        ("csv", "caller_ip,n\n203.0.113.7,60\n"),
    ] {
        let (st, b) = c.call(
            "POST",
            "/v1/query",
            Some(reader),
            Some(json!({"sql": q, "format": format})),
        );
        assert_eq!(
            (st, String::from_utf8_lossy(&b).as_ref()),
            (StatusCode::OK, check)
        );
        calls += 1;
    }
    let (st, b) = c.call(
        "POST",
        "/v1/query",
        Some(reader),
        Some(json!({"sql": q, "format": "arrow"})),
    );
    calls += 1;
    assert_eq!(st, StatusCode::OK);
    let batches: Vec<_> = datafusion::arrow::ipc::reader::StreamReader::try_new(&b[..], None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    // Strings as plain Utf8 (queries run on Utf8View; not every Arrow reader knows it).
    assert_eq!(
        batches[0].schema().field(0).data_type(),
        &datafusion::arrow::datatypes::DataType::Utf8
    );
    let bad = [
        ("SELECT nope FROM events", StatusCode::BAD_REQUEST, "nope"),
        ("DROP VIEW events", StatusCode::BAD_REQUEST, "not allowed"),
        (
            "COPY (SELECT 1) TO '/tmp/x.csv'",
            StatusCode::BAD_REQUEST,
            "not allowed",
        ),
        ("SELECT * FROM '/etc/passwd'", StatusCode::BAD_REQUEST, ""),
        (
            "SELECT * FROM unnest(range(0, 1000))",
            StatusCode::UNPROCESSABLE_ENTITY,
            "more than 500 rows",
        ),
    ];
    for (sql, status, says) in bad {
        let (st, v) = c.json("POST", "/v1/query", Some(reader), Some(json!({"sql": sql})));
        calls += 1;
        assert_eq!(st, status, "{sql}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{sql}: {v}");
    }

    // Proofs: the bundle `vigil verify-proof` checks with the public key alone.
    let (st, bundle) = c.json(
        "GET",
        "/v1/proofs/inclusion?log=mesh/0&index=7",
        Some(reader),
        None,
    );
    calls += 1;
    assert_eq!(st, StatusCode::OK, "{bundle}");
    let bundle_path = tmp.path().join("proof.json");
    std::fs::write(&bundle_path, bundle.to_string()).unwrap();
    let keys_path = tmp.path().join("api.keys");
    let (_, registry) = c.call("GET", "/v1/keys", Some(reader), None);
    calls += 1;
    std::fs::write(&keys_path, registry).unwrap();
    let checked = vigil_command()
        .arg("verify-proof")
        .arg(&bundle_path)
        .arg("--keys")
        .arg(&keys_path)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let (st, v) = c.json(
        "GET",
        "/v1/proofs/inclusion?log=mesh/0&index=100000",
        Some(reader),
        None,
    );
    calls += 1;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    // The checkpoints as a table, too.
    let cps = c.sql(
        reader,
        "SELECT max(tree_size) AS n FROM checkpoints WHERE topic = 'mesh'",
    );
    calls += 1;
    assert_eq!(cps, vec![json!({"n": 60})]);

    // The lifecycle: the analyst acknowledged in the matrix above (the first role the change
    // takes); a reader may not, and a second acknowledgement is refused.
    let ack = format!("/v1/alerts/{alert_id}/ack");
    let id = alert_id.clone();
    assert_eq!(
        c.call("POST", &ack, Some(reader), None).0,
        StatusCode::FORBIDDEN
    );
    let (st, v) = c.json("POST", &ack, Some(keys[1].1), None);
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    calls += 2;
    let (_, v) = c.json("GET", "/v1/alerts?status=acknowledged", Some(reader), None);
    assert_eq!(v["total"], 1);
    assert_eq!(
        (
            v["alerts"][0]["status_by"].as_str(),
            v["alerts"][0]["status_note"].as_str()
        ),
        (Some("key:analyst"), Some("on it"))
    );
    let (st, _) = c.call("GET", "/v1/alerts?status=closed", Some(reader), None);
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "an unknown status is no filter"
    );
    calls += 1;
    let history = c.sql(
        reader,
        &format!(
            "SELECT revision, status FROM alert_history WHERE alert_id = '{id}' ORDER BY revision"
        ),
    );
    assert_eq!(history.last().unwrap()["status"], "acknowledged");
    calls += 2;

    // OPA's own upload format: a gzip JSON array of decisions in, one row per decision out,
    // chained under Vigil's own log; one that does not decode is a 400, kept as rejected.
    let sample = data_text("opa/opa_decision_logs.jsonl");
    let decisions: Vec<Value> = sample
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&serde_json::to_vec(&decisions).unwrap())
            .unwrap();
        e.finish().unwrap()
    };
    let ingestor = keys[2].1;
    let opa_headers = [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    let (st, v) = c.post_raw("/logs", ingestor, &opa_headers, gz.clone());
    assert_eq!(
        (st, &v),
        (StatusCode::OK, &json!({"events": decisions.len()}))
    );
    assert_eq!(
        c.post_raw("/logs", reader, &opa_headers, gz).0,
        StatusCode::FORBIDDEN
    );
    let (st, v) = c.post_raw("/logs", ingestor, &opa_headers, b"not an upload".to_vec());
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["stored"], "as a rejected record");
    calls += 3;
    let rows = c.sql(
        reader,
        "SELECT event_id, source_format FROM events WHERE kafka_topic = 'vigil.opa' ORDER BY kafka_partition, kafka_offset, record_index",
    );
    // The matrix's uploads first (one per role that may upload), then the sample's.
    let matrix_uploads = routes
        .iter()
        .find(|r| r.path == "/logs")
        .and_then(|r| r.roles)
        .map_or(0, |r| r.len());
    let want: Vec<Value> = std::iter::repeat_n(
        json!({"event_id": "matrix", "source_format": "opa"}),
        matrix_uploads,
    )
    .chain(
        decisions
            .iter()
            .map(|d| json!({"event_id": d["decision_id"], "source_format": "opa"})),
    )
    .collect();
    assert_eq!(rows, want);
    let rejected = c.sql(
        reader,
        "SELECT count(*) AS n FROM rejected WHERE kafka_topic = 'vigil.opa'",
    );
    assert!(rejected[0]["n"].as_u64().unwrap() >= 1);
    calls += 2;

    // Refused 25 times from one address: Vigil's own rule sees it in Vigil's own log.
    for _ in 0..25 {
        c.call("GET", "/v1/alerts", Some("vk_guess"), None);
        calls += 1;
    }
    wait_for("the API refusal alert", Duration::from_secs(60), || {
        let (_, v) = c.json(
            "GET",
            "/v1/alerts?rule=vigil.api.denied_burst",
            Some(reader),
            None,
        );
        (v["total"].as_u64() == Some(1)).then_some(v)
    });

    // Rules reload (admin): a rule that does not load refuses the whole reload; a good new
    // rule starts empty, the default pack keeps running; both are recorded.
    let admin = "vk_admin_0123456789";
    std::fs::write(
        rules_dir.join("bad.toml"),
        "id = \"x.bad\"\nversion = 1\nkind = \"nope\"\n",
    )
    .unwrap();
    let (st, v) = c.json("POST", "/v1/rules/reload", Some(admin), None);
    calls += 1;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"].as_str().unwrap().contains("bad.toml"), "{v}");
    std::fs::remove_file(rules_dir.join("bad.toml")).unwrap();
    std::fs::write(
        rules_dir.join("new.toml"),
        "id = \"x.new\"\nversion = 1\ntitle = \"errors\"\nseverity = \"low\"\n\
         kind = \"threshold\"\nfilter = 'decision == \"error\"'\ngroup_by = [\"caller_ip\"]\n\
         count = 5\nwindow = \"1m\"\n",
    )
    .unwrap();
    let (st, v) = c.json("POST", "/v1/rules/reload", Some(admin), None);
    calls += 1;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["fresh"], json!(["x.new"]), "{v}");
    assert_eq!(v["removed"], json!([]), "{v}");
    let running = v["rules"].as_array().unwrap();
    assert!(
        running.contains(&json!("x.new")) && running.contains(&json!("vigil.api.denied_burst"))
    );
    let reloads = c.sql(
        reader,
        "SELECT caller_principal FROM events WHERE kafka_topic = 'vigil.audit' \
         AND action = 'rules.reload'",
    );
    calls += 1;
    // The matrix's admin call reloaded once too; the rules directory is watched, so the
    // files written above may have been reloaded by `file-watch` as well.
    let by = |who: &str| {
        reloads
            .iter()
            .filter(|r| r["caller_principal"] == who)
            .count()
    };
    assert_eq!(by("key:admin"), 2, "{reloads:?}");
    assert_eq!(
        by("key:admin") + by("file-watch"),
        reloads.len(),
        "{reloads:?}"
    );

    // Probing for routes without a credential: a 404, recorded as refused.
    assert_eq!(
        c.call("GET", "/v1/admin", None, None).0,
        StatusCode::NOT_FOUND
    );
    calls += 1;

    // Every call (probes aside) is in the API's log: who, what, how it ended.
    let audit = c.sql(
        reader,
        "SELECT caller_principal, caller_ip, action, decision, status_code, reason FROM events \
         WHERE kafka_topic = 'vigil.api' ORDER BY kafka_offset",
    );
    assert!(
        audit.len() >= calls,
        "{} recorded, {calls} made",
        audit.len()
    );
    assert!(audit.iter().all(|r| r["caller_ip"] == "127.0.0.1"));
    assert!(audit.iter().any(|r| r["decision"] == "deny"
        && r["status_code"] == 401
        && r["caller_principal"].is_null()
        && r["reason"].as_str().unwrap().contains("unknown API key")));
    assert!(audit.iter().any(|r| r["decision"] == "deny"
        && r["status_code"] == 403
        && r["caller_principal"] == "key:ingestor"));
    assert!(audit.iter().any(|r| r["action"] == "GET /v1/admin"
        && r["decision"] == "deny"
        && r["status_code"] == 404));
    assert!(audit.iter().any(|r| r["action"] == "POST /v1/query"
        && r["decision"] == "allow"
        && r["caller_principal"] == "key:reader"));
    let (st, raw) = c.call(
        "POST",
        "/v1/query",
        Some(reader),
        Some(json!({"sql":
        "SELECT raw FROM events WHERE kafka_topic = 'vigil.api' AND action = 'POST /v1/query' \
         AND status_code = 422 LIMIT 1", "format": "ndjson"})),
    );
    assert_eq!(st, StatusCode::OK);
    let raw: Value = serde_json::from_slice(&raw).unwrap();
    let rec: Value = serde_json::from_slice(&hex_or_bytes(&raw["raw"])).unwrap();
    assert_eq!(rec["api"]["sql"], "SELECT * FROM unnest(range(0, 1000))");

    assert!(s.terminate());
    // Verified like every log: chained, signed, anchored.
    let pinned = tmp.path().join("pinned.keys");
    std::fs::copy(vigil_store::layout::registry(&dir), &pinned).unwrap();
    let out = vigil_command()
        .args(["verify", "--json", "--data-dir"])
        .arg(&dir)
        .arg("--keys")
        .arg(&pinned)
        .args(["--anchor-kafka", &broker.addr])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let api_log = report["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["topic"] == "vigil.api");
    assert!(
        api_log.is_some_and(|l| l["anchored"].as_u64() > Some(0)),
        "{report:#}"
    );
}

/// A binary column as JSON: arrow's JSON writer gives bytes as hex or base64 text; try both.
fn hex_or_bytes(v: &Value) -> Vec<u8> {
    let s = v.as_str().unwrap();
    if let Ok(b) = hex::decode(s) {
        return b;
    }
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn rows_not_yet_in_a_file_are_queryable_and_never_counted_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let key = "vk_reader_live_0123456789";
    let config = tmp.path().join("vigil.toml");
    std::fs::write(&config, api_key_entry("reader", key, &["reader"])).unwrap();
    let broker = Broker::start();
    broker.create_topic("mesh", 1);
    let dir = tmp.path().join("data");
    // A batch is sealed at 60 events, or after a minute: 100 records make one file of 60 and
    // leave 40 in the open batch.
    let s = serve_with(
        &broker,
        "mesh",
        &dir,
        "g-live",
        &[
            ("VIGIL_STORE__MAX_BATCH_WAIT_MS", "60000"),
            ("VIGIL_STORE__MAX_BATCH_EVENTS", "60"),
        ],
        Some(&config),
        &[],
    );
    let c = Client::connect(&s);
    wait_for("ready", Duration::from_secs(60), || {
        (c.call("GET", "/readyz", None, None).0 == StatusCode::OK).then_some(())
    });
    let recs: Vec<Rec> = (0..100)
        .map(|i| Rec {
            partition: 0,
            key: None,
            value: Some(
                format!(r#"{{"decision_id":"l{i}","result":true,"input":{{}}}}"#).into_bytes(),
            ),
            headers: Vec::new(),
        })
        .collect();
    produce(&broker.producer(), "mesh", &recs);
    let count = || {
        let (s, v) = c.json("POST", "/v1/query", Some(key), Some(json!({"sql":
            "SELECT count(*) AS n, count(DISTINCT kafka_offset) AS d FROM events WHERE kafka_topic = 'mesh'"})));
        assert_eq!(s, StatusCode::OK, "{v}");
        (v[0]["n"].as_u64().unwrap(), v[0]["d"].as_u64().unwrap())
    };
    wait_for("all 100 rows through SQL", Duration::from_secs(30), || {
        (count().0 >= 100).then_some(())
    });
    // 60 of them in a file, 40 only in memory: each counted once.
    assert_eq!(
        stored_per_partition(&dir, "mesh").get(&0).copied(),
        Some(60)
    );
    assert_eq!(count(), (100, 100));
    assert!(s.terminate());
    // Stopping seals the rest: the same 100 from the files alone.
    assert_eq!(
        stored_per_partition(&dir, "mesh").get(&0).copied(),
        Some(100)
    );
}
