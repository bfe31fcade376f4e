//! Who is calling, and what they may do: bearer JWTs (HS256 with a shared secret, RS256/ES256
//! with public keys from a JWKS file; issuer, audience, expiry and not-before checked) and API
//! keys (stored as SHA-256 hashes), each carrying roles. A token is refused before it is
//! parsed when oversized; `alg: none` does not parse; a token's algorithm must be one the key
//! it names is for, so an RSA public key is never taken as an HMAC secret.

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a caller may do. Roles do not imply each other: a token lists each it needs.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// SQL, alerts, checkpoints, proofs, keys, metrics.
    Reader,
    /// What a reader does, and the alert lifecycle.
    Analyst,
    /// `POST /logs`.
    Ingestor,
    /// Administration (key rotation, rule reloads).
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "reader" => Some(Role::Reader),
            "analyst" => Some(Role::Analyst),
            "ingestor" => Some(Role::Ingestor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Analyst => "analyst",
            Role::Ingestor => "ingestor",
            Role::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// `jwt:<iss>/<sub>` or `key:<name>`.
    pub id: String,
    pub roles: Vec<Role>,
}

/// Why a request is not authenticated (said in the 401, recorded in the audit log).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials (Authorization: Bearer <token or API key>)")]
    Missing,
    #[error("the Authorization header is not `Bearer <credential>`")]
    Malformed,
    #[error("the credential is longer than {0} bytes")]
    Oversized(usize),
    #[error("unknown API key")]
    UnknownKey,
    #[error("the client certificate is not one of api.clients")]
    UnknownCert,
    #[error("token refused: {0}")]
    Token(String),
}

/// One configured API key: its name, the SHA-256 of the key, its roles.
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub name: String,
    pub sha256: [u8; 32],
    pub roles: Vec<Role>,
}

/// JWT settings. JWTs are accepted only with an issuer and an audience to check.
#[derive(Clone, Default)]
pub struct JwtConfig {
    /// HS256 shared secret.
    pub hs256_secret: Option<Vec<u8>>,
    /// Public keys for RS256/ES256, by `kid`.
    pub jwks: Option<JwkSet>,
    pub issuer: String,
    pub audience: String,
    /// The claim holding the roles: an array of role names.
    pub roles_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwks_keys", &self.jwks.as_ref().map(|k| k.keys.len()))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Longest credential looked at, in bytes.
pub(crate) const MAX_CREDENTIAL_BYTES: usize = 8192;

/// The authenticator: API keys by hash, client certificates by fingerprint, JWT keys.
pub struct Auth {
    keys: HashMap<[u8; 32], ApiKey>,
    /// Client certificates (mTLS), by the SHA-256 of their DER; `sha256` holds it.
    certs: HashMap<[u8; 32], ApiKey>,
    jwt: Option<JwtConfig>,
    /// RS256/ES256 keys by kid, with the algorithm each is for.
    public: HashMap<String, (Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("api_keys", &self.keys.len())
            .field("client_certs", &self.certs.len())
            .field("jwt", &self.jwt)
            .finish()
    }
}

/// A key's SHA-256, as API keys are configured.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Why the API's authentication settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("JWTs need an issuer and an audience to check")]
    NoIssuerOrAudience,
    #[error("the HS256 secret must be at least 32 bytes")]
    ShortSecret,
    #[error("every JWKS key needs a kid")]
    NoKid,
    #[error("JWKS key {0}: only RSA and EC (P-256) keys")]
    KeyType(String),
    #[error("JWKS key {kid}: {source}")]
    Key {
        kid: String,
        source: jsonwebtoken::errors::Error,
    },
    #[error("JWTs need an HS256 secret or a JWKS file")]
    NoJwtKey,
    #[error("API key or client {0}: no roles")]
    NoRoles(String),
    #[error("JWKS: {0}")]
    Jwks(#[from] serde_json::Error),
}

impl Auth {
    /// Check the settings: every JWKS key needs a `kid` and an RS256 or ES256 algorithm.
    pub fn new(
        keys: Vec<ApiKey>,
        certs: Vec<ApiKey>,
        jwt: Option<JwtConfig>,
    ) -> Result<Auth, AuthConfigError> {
        let mut public = HashMap::new();
        if let Some(j) = &jwt {
            if j.issuer.is_empty() || j.audience.is_empty() {
                return Err(AuthConfigError::NoIssuerOrAudience);
            }
            if j.hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
                return Err(AuthConfigError::ShortSecret);
            }
            for k in j.jwks.iter().flat_map(|s| &s.keys) {
                let kid = k.common.key_id.clone().ok_or(AuthConfigError::NoKid)?;
                let alg = match &k.algorithm {
                    AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => return Err(AuthConfigError::KeyType(kid)),
                };
                let key = DecodingKey::from_jwk(k).map_err(|source| AuthConfigError::Key {
                    kid: kid.clone(),
                    source,
                })?;
                public.insert(kid, (alg, key));
            }
            if j.hs256_secret.is_none() && public.is_empty() {
                return Err(AuthConfigError::NoJwtKey);
            }
        }
        for k in keys.iter().chain(&certs) {
            if k.roles.is_empty() {
                return Err(AuthConfigError::NoRoles(k.name.clone()));
            }
        }
        Ok(Auth {
            keys: keys.into_iter().map(|k| (k.sha256, k)).collect(),
            certs: certs.into_iter().map(|k| (k.sha256, k)).collect(),
            jwt,
            public,
        })
    }

    /// Whether any way in is configured (without one, every protected route is 401).
    pub fn configured(&self) -> bool {
        !self.keys.is_empty() || !self.certs.is_empty() || self.jwt.is_some()
    }

    /// The caller of a TLS connection whose (verified) client certificate has this SHA-256.
    pub(crate) fn authenticate_cert(&self, fingerprint: &[u8; 32]) -> Result<Principal, AuthError> {
        let c = self.certs.get(fingerprint).ok_or(AuthError::UnknownCert)?;
        Ok(Principal {
            id: format!("cert:{}", c.name),
            roles: c.roles.clone(),
        })
    }

    /// The caller of a request with this `Authorization` header value.
    pub fn authenticate(&self, header: Option<&[u8]>, now_s: u64) -> Result<Principal, AuthError> {
        let h = header.ok_or(AuthError::Missing)?;
        if h.len() > MAX_CREDENTIAL_BYTES + 7 {
            return Err(AuthError::Oversized(MAX_CREDENTIAL_BYTES));
        }
        let h = std::str::from_utf8(h).map_err(|_| AuthError::Malformed)?;
        let cred = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or(AuthError::Malformed)?;
        // A JWT has two dots; an API key none.
        if cred.bytes().filter(|&b| b == b'.').count() == 2 {
            self.jwt(cred, now_s)
        } else {
            let k = self
                .keys
                .get(&hash_key(cred))
                .ok_or(AuthError::UnknownKey)?;
            Ok(Principal {
                id: format!("key:{}", k.name),
                roles: k.roles.clone(),
            })
        }
    }

    fn jwt(&self, token: &str, now_s: u64) -> Result<Principal, AuthError> {
        let bad = |m: String| AuthError::Token(m);
        let j = self
            .jwt
            .as_ref()
            .ok_or_else(|| bad("JWTs are not accepted here".into()))?;
        let header = jsonwebtoken::decode_header(token).map_err(|e| bad(e.to_string()))?;
        let (alg, key) = match header.alg {
            Algorithm::HS256 => {
                let s = j
                    .hs256_secret
                    .as_ref()
                    .ok_or_else(|| bad("HS256 is not accepted here".into()))?;
                (Algorithm::HS256, DecodingKey::from_secret(s))
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header.kid.as_deref().ok_or_else(|| bad("no kid".into()))?;
                let (alg, key) = self
                    .public
                    .get(kid)
                    .ok_or_else(|| bad(format!("unknown kid {kid:?}")))?;
                if *alg != header.alg {
                    return Err(bad(format!(
                        "key {kid:?} is for {alg:?}, the token says {:?}",
                        header.alg
                    )));
                }
                (*alg, key.clone())
            }
            other => return Err(bad(format!("algorithm {other:?} is not accepted"))),
        };
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.leeway = j.leeway_s;
        v.validate_nbf = true;
        v.set_issuer(&[&j.issuer]);
        v.set_audience(&[&j.audience]);
        v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &v)
                .map_err(|e| bad(e.to_string()))?;
        let c = data.claims;
        // jsonwebtoken checks against the system clock; `now_s` makes the check testable and
        // is checked again here.
        let num = |k: &str| c.get(k).and_then(serde_json::Value::as_u64);
        if num("exp").is_some_and(|exp| exp + j.leeway_s < now_s) {
            return Err(bad("ExpiredSignature".into()));
        }
        if num("nbf").is_some_and(|nbf| nbf > now_s + j.leeway_s) {
            return Err(bad("ImmatureSignature".into()));
        }
        let sub = c
            .get("sub")
            .and_then(|s| s.as_str())
            .ok_or_else(|| bad("sub is not a string".into()))?;
        let roles: Vec<Role> = c
            .get(&j.roles_claim)
            .and_then(|r| r.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().and_then(Role::parse))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Principal {
            id: format!("jwt:{}/{sub}", j.issuer),
            roles,
        })
    }
}

/// A JWKS file's keys.
pub fn read_jwks(text: &str) -> Result<JwkSet, AuthConfigError> {
    Ok(serde_json::from_str(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn auth() -> Auth {
        Auth::new(
            vec![ApiKey {
                name: "grafana".into(),
                sha256: hash_key("vk_reader_key"),
                roles: vec![Role::Reader],
            }],
            vec![],
            Some(JwtConfig {
                hs256_secret: Some(SECRET.to_vec()),
                jwks: None,
                issuer: "https://idp.example".into(),
                audience: "vigil".into(),
                roles_claim: "roles".into(),
                leeway_s: 0,
            }),
        )
        .unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({"sub": "ana", "iss": "https://idp.example", "aud": "vigil",
            "exp": now() + 60, "roles": ["analyst", "bogus"]})
    }

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn api_keys_and_tokens_authenticate_with_their_roles() {
        let a = auth();
        let p = a
            .authenticate(Some(b"Bearer vk_reader_key"), now())
            .unwrap();
        assert_eq!(
            (p.id.as_str(), p.roles.as_slice()),
            ("key:grafana", &[Role::Reader][..])
        );
        let p = a
            .authenticate(Some(&bearer(&token(claims()))), now())
            .unwrap();
        assert_eq!(p.id, "jwt:https://idp.example/ana");
        assert_eq!(p.roles, vec![Role::Analyst]);
        assert_eq!(a.authenticate(None, now()), Err(AuthError::Missing));
        assert_eq!(
            a.authenticate(Some(b"Basic x"), now()),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            a.authenticate(Some(b"Bearer nope"), now()),
            Err(AuthError::UnknownKey)
        );
        let huge = bearer(&"a".repeat(MAX_CREDENTIAL_BYTES + 1));
        assert_eq!(
            a.authenticate(Some(&huge), now()),
            Err(AuthError::Oversized(8192))
        );
    }

    #[test]
    fn token_attacks_are_refused() {
        let a = auth();
        let refused = |c: serde_json::Value| a.authenticate(Some(&bearer(&token(c))), now());
        let mut c = claims();
        c["exp"] = (now() - 10).into();
        assert!(refused(c).is_err(), "expired");
        let mut c = claims();
        c["nbf"] = (now() + 3600).into();
        assert!(refused(c).is_err(), "not yet valid");
        let mut c = claims();
        c["aud"] = "other".into();
        assert!(refused(c).is_err(), "wrong audience");
        let mut c = claims();
        c["iss"] = "https://evil.example".into();
        assert!(refused(c).is_err(), "wrong issuer");
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert!(refused(c).is_err(), "no expiry");
        // Bad signature: another secret.
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"another secret of at least 32 bytes!"),
        )
        .unwrap();
        assert!(a.authenticate(Some(&bearer(&forged)), now()).is_err());
        // alg: none, with the claims unchanged.
        use base64_url as b64;
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(claims().to_string().as_bytes())
        );
        assert!(a.authenticate(Some(&bearer(&none)), now()).is_err());
        // A payload edited under a valid signature.
        let t = token(claims());
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = claims();
        c["roles"] = serde_json::json!(["admin"]);
        let edited = format!(
            "{}.{}.{}",
            parts[0],
            b64(c.to_string().as_bytes()),
            parts[2]
        );
        assert!(a.authenticate(Some(&bearer(&edited)), now()).is_err());
    }

    fn base64_url(b: &[u8]) -> String {
        use std::fmt::Write;
        // RFC 4648 base64url without padding (enough for the test's forged tokens).
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                let _ = out.write_char(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn settings_are_checked() {
        let jwt = |issuer: &str, secret: &[u8]| JwtConfig {
            hs256_secret: Some(secret.to_vec()),
            issuer: issuer.into(),
            audience: "vigil".into(),
            roles_claim: "roles".into(),
            ..Default::default()
        };
        assert!(matches!(
            Auth::new(vec![], vec![], Some(jwt("", SECRET))),
            Err(AuthConfigError::NoIssuerOrAudience)
        ));
        assert!(matches!(
            Auth::new(vec![], vec![], Some(jwt("i", b"short"))),
            Err(AuthConfigError::ShortSecret)
        ));
        let no_roles = ApiKey {
            name: "x".into(),
            sha256: [0; 32],
            roles: vec![],
        };
        assert!(matches!(
            Auth::new(vec![], vec![no_roles], None),
            Err(AuthConfigError::NoRoles(n)) if n == "x"
        ));
        assert!(!Auth::new(vec![], vec![], None).unwrap().configured());
        let dbg = format!(
            "{:?}",
            Auth::new(vec![], vec![], Some(jwt("i", SECRET))).unwrap()
        );
        assert!(!dbg.contains("0123456789abcdef"), "{dbg}");
    }
}
