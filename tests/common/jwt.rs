//! Tokens minted in tests: an issuer with ES256 and EdDSA keys generated per run (rcgen, on ring) and a
//! fixed RS256 test key (tests/fixtures; ring cannot generate RSA keys), its JWKS as a file or served over
//! HTTP by a small server whose document a test can change (key rotation).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub const ISSUER: &str = "https://issuer.test/realms/portico";
pub const AUDIENCE: &str = "portico";
/// PKCS#1 DER (`openssl genrsa -traditional 2048`, then `openssl rsa -outform DER -traditional`); a test key only.
const RSA_KEY_DER: &[u8] = include_bytes!("../fixtures/jwt-rs256-test-key.der");

/// One signing key: its kid, algorithm, private half and public JWK.
pub struct SigningKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

impl SigningKey {
    pub fn es256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let raw = pair.public_key_raw();
        // Uncompressed point: 0x04, then x and y of 32 bytes each.
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])});
        let encoding = EncodingKey::from_ec_der(&pair.serialize_der());
        Self { kid: kid.into(), algorithm: Algorithm::ES256, encoding, jwk }
    }

    pub fn eddsa(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
        let jwk =
            json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw())});
        let encoding = EncodingKey::from_ed_der(&pair.serialize_der());
        Self { kid: kid.into(), algorithm: Algorithm::EdDSA, encoding, jwk }
    }

    pub fn rs256(kid: &str) -> Self {
        let encoding = EncodingKey::from_rsa_der(RSA_KEY_DER);
        let mut jwk = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::RS256).expect("RSA JWK"),
        )
        .expect("JWK as JSON");
        jwk["kid"] = json!(kid);
        Self { kid: kid.into(), algorithm: Algorithm::RS256, encoding, jwk }
    }

    /// A token with these claims, signed by this key and naming its kid.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign token")
    }
}

/// A JWKS document holding the public halves of `keys`.
pub fn jwks(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

/// Valid claims for `sub` with `roles`, for ten minutes.
pub fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles, "iat": now(), "exp": now() + 600})
}

/// `Authorization` header value.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Serves a JWKS over HTTP at `/jwks`; the document can be replaced while it runs, and fetches are counted.
pub struct JwksServer {
    pub addr: SocketAddr,
    document: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start(document: String) -> Self {
        let document = Arc::new(Mutex::new(document));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (Arc::clone(&document), Arc::clone(&fetches));
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (served, counted) = (Arc::clone(&served), Arc::clone(&counted));
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = served.lock().map(|d| d.clone()).unwrap_or_default();
                    ([(http::header::CONTENT_TYPE, "application/json")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind JWKS server");
        let addr = listener.local_addr().expect("JWKS server address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, document, fetches }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    pub fn replace(&self, document: String) {
        if let Ok(mut current) = self.document.lock() {
            *current = document;
        }
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// Claims as a map, to take one out or change it.
pub fn with(mut claims: Value, changes: &[(&str, Value)]) -> Value {
    let map: &mut serde_json::Map<String, Value> = claims.as_object_mut().expect("claims object");
    for (name, value) in changes {
        if value.is_null() {
            map.remove(*name);
        } else {
            map.insert((*name).to_string(), value.clone());
        }
    }
    claims
}
