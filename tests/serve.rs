//! `profile-sync serve`, the profile API, from outside: the real binary serving the embedded
//! store and index of a generated run, called over HTTP with keys made by `api-keys create`.
//! What each role may see, reveal and do; the audit trail naming the key; rate limits; and
//! the audit store failing closed.

mod common;

use common::canary::Canary;
use common::services::services_pipeline;
use common::*;
use serde_json::{json, Value as Json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

/// A served data folder: a generated run, keys per role, and the server.
struct Served {
    dir: tempfile::TempDir,
    input: PathBuf,
    pipeline: PathBuf,
    server: Child,
    url: String,
    http: reqwest::Client,
    /// What the server has logged so far (at debug level).
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl Served {
    /// `serve` is appended to pipelines/local.yaml as its `serve:` section.
    fn start(serve: &str) -> Self {
        Self::start_with(serve, &[]).0
    }

    /// On `backend`'s store, index and keys.
    fn start_on(backend: Backend, serve: &str) -> Self {
        Self::start_on_with(backend, serve, &[]).0
    }

    /// Also passes `args` to `serve`; returns what it printed before it served.
    fn start_with(serve: &str, args: &[&str]) -> (Self, Vec<String>) {
        Self::start_on_with(Backend::Embedded, serve, args)
    }

    fn start_on_with(backend: Backend, serve: &str, args: &[&str]) -> (Self, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let pipeline = dir.path().join("serve.yaml");
        let text = match backend {
            Backend::Embedded => local_pipeline_text(),
            Backend::Zones => {
                std::fs::read_to_string(repo().join("pipelines/residency-local.yaml"))
                    .unwrap()
                    .replace("../", &format!("{}/", repo().display()))
            }
            Backend::Services => {
                services_pipeline("serve", &pipeline);
                std::fs::read_to_string(&pipeline).unwrap()
            }
        } + serve;
        std::fs::write(&pipeline, text).unwrap();
        let (input, _) = generate(dir.path(), 400, 0.0, "jsonl", 5);
        run_with(&pipeline, &input, &dir.path().join("data"));
        let mut server = bin_std()
            .args(["serve", "--listen", "127.0.0.1:0", "--pipeline"])
            .arg(&pipeline)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .env("PROFILE_SYNC_LOG", "debug")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(server.stderr.take().unwrap());
        let mut printed = Vec::new();
        let url = loop {
            let mut line = String::new();
            stderr.read_line(&mut line).unwrap();
            assert!(!line.is_empty(), "serve ended before serving: {printed:?}");
            printed.push(line.trim().to_string());
            if line.contains("serving the profile API") {
                break line
                    .trim()
                    .rsplit(' ')
                    .next()
                    .filter(|u| u.starts_with("http://"))
                    .unwrap_or_else(|| panic!("serve did not say where it listens: {line:?}"))
                    .to_string();
            }
        };
        // Keep reading stderr (the server's log) so the server never blocks on a full pipe.
        let log = std::sync::Arc::new(std::sync::Mutex::new(printed.join("\n")));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let mut log = kept.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        (
            Self {
                dir,
                input,
                pipeline,
                server,
                url,
                http: reqwest::Client::new(),
                log,
            },
            printed,
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        bin_std()
            .args(args)
            .arg("--pipeline")
            .arg(&self.pipeline)
            .arg("--data-dir")
            .arg(self.data())
            .output()
            .unwrap()
    }

    /// A key for `role`, made by the CLI.
    fn key(&self, name: &str, role: &str) -> String {
        let out = self.cli(&[
            "api-keys", "create", "--name", name, "--role", role, "--output", "json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let made: Json = serde_json::from_slice(&out.stdout).unwrap();
        made["key"].as_str().unwrap().to_string()
    }

    async fn get(&self, key: Option<&str>, path: &str) -> (u16, Json) {
        let mut request = self.http.get(format!("{}{path}", self.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn post(&self, key: &str, path: &str, body: Json) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `POST /v1/profiles/lookup` of `email` with `reason`.
    async fn lookup(&self, key: &str, email: &str, reason: &str) -> reqwest::Response {
        self.post(
            key,
            "/v1/profiles/lookup",
            json!({"email": email, "reason": reason}),
        )
        .await
    }

    /// A live user with an email, and the generated profile.
    async fn live_user(&self, key: &str) -> (String, serde_json::Map<String, Json>) {
        for (user, expected) in expected_state(&self.input) {
            if expected.deleted || !expected.profile.contains_key("email") {
                continue;
            }
            let (status, body) = self.get(Some(key), &format!("/v1/profiles/{user}")).await;
            if status == 200 && body["state"] == "live" {
                return (user, expected.profile);
            }
        }
        panic!("no live user with an email in the generated run");
    }

    fn audit(&self, user: &str) -> Vec<Json> {
        json_lines(&self.cli(&["audit", user]))
    }
}

/// Where `serve` reads: the embedded store, index and keyring, DynamoDB Local, the
/// OpenSearch-API server and the KMS emulator, or the two residency zones of
/// `pipelines/residency-local.yaml`.
#[derive(Clone, Copy)]
enum Backend {
    Embedded,
    Services,
    Zones,
}

/// Each scenario runs once per backend: `<scenario>::embedded`,
/// `<scenario>::dynamodb_kms_opensearch` and `<scenario>::residency_zones`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn embedded() {
                super::$scenario(super::Backend::Embedded).await;
            }
            #[tokio::test]
            async fn dynamodb_kms_opensearch() {
                super::$scenario(super::Backend::Services).await;
            }
            #[tokio::test]
            async fn residency_zones() {
                super::$scenario(super::Backend::Zones).await;
            }
        }
    )*};
}

on_both_backends!(
    no_key_a_wrong_key_and_a_revoked_key_are_401_as_problem_documents,
    each_role_sees_only_what_it_may_and_pii_is_never_in_a_read,
    a_reveal_needs_a_reason_returns_only_permitted_fields_and_is_audited_once_under_the_key,
    a_privacy_officer_exports_and_erases_with_a_reason_and_each_leaves_one_audit_record,
);

/// pipelines/local.yaml with its relative paths made absolute, to be written anywhere.
fn local_pipeline_text() -> String {
    let root = repo().display().to_string();
    std::fs::read_to_string(local_pipeline())
        .unwrap()
        .replace("../", &format!("{root}/"))
}

fn bin_std() -> std::process::Command {
    let mut cmd = std::process::Command::new(binary());
    cmd.current_dir(repo()).env_remove("PROFILE_SYNC_LOG");
    cmd
}

async fn no_key_a_wrong_key_and_a_revoked_key_are_401_as_problem_documents(backend: Backend) {
    let s = Served::start_on(backend, "");
    let key = s.key("engine", "personalization");
    let (user, _) = s.live_user(&key).await;
    let path = format!("/v1/profiles/{user}/segments");
    let (status, problem) = s.get(None, &path).await;
    assert_eq!(status, 401);
    assert_eq!(problem["status"], 401);
    assert!(problem["detail"].as_str().unwrap().contains("Bearer"));
    let mut wrong = key.clone();
    wrong.pop();
    assert_eq!(s.get(Some(&wrong), &path).await.0, 401);
    assert_eq!(s.get(Some("psk_nothing_here"), &path).await.0, 401);
    assert_eq!(s.get(Some(&key), &path).await.0, 200);
    let out = s.cli(&["api-keys", "revoke", "engine"]);
    assert!(out.status.success());
    assert_eq!(s.get(Some(&key), &path).await.0, 401);
}

async fn each_role_sees_only_what_it_may_and_pii_is_never_in_a_read(backend: Backend) {
    let s = Served::start_on(backend, "");
    let engine = s.key("engine", "personalization");
    let officer = s.key("dpo", "privacy_officer");
    let analyst = s.key("bi", "analyst");
    let (user, generated) = s.live_user(&engine).await;

    let (status, body) = s.get(Some(&engine), &format!("/v1/profiles/{user}")).await;
    assert_eq!(status, 200);
    let profile = &body["profile"];
    assert_eq!(profile["email"], "***");
    if generated.contains_key("preferences") {
        assert_eq!(
            profile["preferences"], "***",
            "sensitive is masked for personalization"
        );
    }
    assert_eq!(profile["locale"], generated["locale"]);
    assert!(body["segments"].is_array());

    let (_, body) = s.get(Some(&officer), &format!("/v1/profiles/{user}")).await;
    assert_eq!(body["profile"]["email"], "***", "pii is only ever revealed");
    if let Some(prefs) = generated.get("preferences") {
        assert_eq!(&body["profile"]["preferences"], prefs);
    }

    let (status, segments) = s
        .get(Some(&engine), &format!("/v1/profiles/{user}/segments"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        segments["segments"],
        s.get(Some(&engine), &format!("/v1/profiles/{user}"))
            .await
            .1["segments"]
    );

    assert_eq!(
        s.get(Some(&analyst), &format!("/v1/profiles/{user}"))
            .await
            .0,
        403
    );
    assert_eq!(s.get(Some(&engine), "/v1/search?q=*").await.0, 403);
    let (status, found) = s
        .get(Some(&analyst), "/v1/search?q=segments:high_value&limit=50")
        .await;
    assert_eq!(status, 200);
    assert!(found["total"].as_u64().unwrap() > 0);

    // No generated PII value in any read answer.
    let canary = Canary::of_generated(&s.input);
    for key in [&engine, &officer] {
        let (_, body) = s.get(Some(key), &format!("/v1/profiles/{user}")).await;
        canary.assert_absent("a read answer", body.to_string());
    }
    canary.assert_absent("a search answer", found.to_string());
}

async fn a_reveal_needs_a_reason_returns_only_permitted_fields_and_is_audited_once_under_the_key(
    backend: Backend,
) {
    let s = Served::start_on(backend, "");
    let support = s.key("support-desk", "support");
    let engine = s.key("engine", "personalization");
    let (user, generated) = s.live_user(&support).await;
    let path = format!("/v1/profiles/{user}/reveal");

    let r = s.post(&support, &path, json!({"fields": ["email"]})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(
        s.post(
            &support,
            &path,
            json!({"fields": ["birth_date"], "reason": "t-1"})
        )
        .await
        .status(),
        403
    );
    assert_eq!(
        s.post(
            &engine,
            &path,
            json!({"fields": ["email"], "reason": "t-1"})
        )
        .await
        .status(),
        403
    );
    assert!(
        s.audit(&user).iter().all(|r| r["action"] != "reveal"),
        "refused reveals leave no record"
    );

    let r = s
        .post(
            &support,
            &path,
            json!({"fields": ["email"], "reason": "ticket 42"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Json = r.json().await.unwrap();
    assert_eq!(body["fields"], json!({"email": generated["email"]}));
    let reveals: Vec<Json> = s
        .audit(&user)
        .into_iter()
        .filter(|r| r["action"] == "reveal")
        .collect();
    assert_eq!(reveals.len(), 1, "{reveals:?}");
    assert_eq!(reveals[0]["actor"], "api-key:support-desk");
    assert_eq!(reveals[0]["fields"], json!(["email"]));
    assert_eq!(reveals[0]["reason"], "ticket 42");

    // A lookup by email finds the user and is audited as well.
    let email = generated["email"].as_str().unwrap();
    let r = s.lookup(&support, email, "caller on the phone").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Json>().await.unwrap()["user_id"], user);
    let lookups = s
        .audit(&user)
        .into_iter()
        .filter(|r| r["action"] == "lookup")
        .count();
    assert_eq!(lookups, 1);
}

#[tokio::test]
async fn past_its_reveal_limit_a_key_gets_429_with_retry_after_and_nothing_is_revealed() {
    let s = Served::start("serve:\n  rate_limit:\n    reveal_per_minute: 2\n");
    let support = s.key("support-desk", "support");
    let (user, _) = s.live_user(&support).await;
    let path = format!("/v1/profiles/{user}/reveal");
    let body = json!({"fields": ["email"], "reason": "ticket 7"});
    assert_eq!(s.post(&support, &path, body.clone()).await.status(), 200);
    assert_eq!(s.post(&support, &path, body.clone()).await.status(), 200);
    let r = s.post(&support, &path, body.clone()).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let reveals = s
        .audit(&user)
        .into_iter()
        .filter(|r| r["action"] == "reveal")
        .count();
    assert_eq!(reveals, 2);
    // Another key has a limit of its own.
    let other = s.key("support-2", "support");
    assert_eq!(s.post(&other, &path, body).await.status(), 200);
}

#[tokio::test]
async fn when_the_audit_trail_cannot_be_written_reveal_lookup_and_export_answer_503_and_reveal_nothing(
) {
    let s = Served::start("");
    let support = s.key("support-desk", "support");
    let (user, generated) = s.live_user(&support).await;
    // The audit store goes down for writes: an outside connection makes every append fail.
    let db = rusqlite::Connection::open(s.data().join("profiles.sqlite")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER audit_down BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'down'); END;",
    )
    .unwrap();
    let r = s
        .post(
            &support,
            &format!("/v1/profiles/{user}/reveal"),
            json!({"fields": ["email"], "reason": "ticket 9"}),
        )
        .await;
    assert_eq!(r.status(), 503);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains(generated["email"].as_str().unwrap()),
        "{text}"
    );
    let email = generated["email"].as_str().unwrap();
    let r = s.lookup(&support, email, "x").await;
    assert_eq!(r.status(), 503);
    assert!(!r.text().await.unwrap().contains(&user));
    let officer = s.key("dpo", "privacy_officer");
    let r = s
        .post(
            &officer,
            &format!("/v1/profiles/{user}/export"),
            json!({"reason": "DSAR 9"}),
        )
        .await;
    assert_eq!(r.status(), 503);
    assert!(!r.text().await.unwrap().contains(email));
    db.execute_batch("DROP TRIGGER audit_down;").unwrap();
    assert_eq!(
        s.post(
            &support,
            &format!("/v1/profiles/{user}/reveal"),
            json!({"fields": ["email"], "reason": "ticket 9"})
        )
        .await
        .status(),
        200
    );
}

#[test]
fn a_key_for_an_unknown_role_or_a_role_with_a_typo_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = local_pipeline_text();
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(&pipeline, &base).unwrap();
    let create = |pipeline: &Path, role: &str| {
        bin_std()
            .args([
                "api-keys",
                "create",
                "--name",
                "x",
                "--role",
                role,
                "--pipeline",
            ])
            .arg(pipeline)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = create(&pipeline, "superuser");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no role `superuser`"));
    std::fs::write(
        &pipeline,
        base + "serve:\n  roles:\n    support:\n      actions: [read, reveal]\n      reveal: [emial]\n",
    )
    .unwrap();
    let out = create(&pipeline, "support");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("emial"));
}

/// An identity provider made here: an ES256 key pair (aws-lc-rs), its JWK set, and tokens
/// signed by hand as JWS compact serialisations (RFC 7515), with no JWT library.
struct Provider {
    pair: aws_lc_rs::signature::EcdsaKeyPair,
    kid: String,
}

const ISSUER: &str = "https://id.example.test/";

impl Provider {
    fn new(kid: &str) -> Self {
        use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        Self {
            pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            kid: kid.into(),
        }
    }

    fn jwk(&self) -> Json {
        use aws_lc_rs::signature::KeyPair;
        // An uncompressed P-256 point: 0x04, then x and y (32 bytes each).
        let point = self.pair.public_key().as_ref().to_vec();
        assert_eq!((point.len(), point[0]), (65, 4));
        json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "alg": "ES256", "use": "sig",
               "x": b64(&point[1..33]), "y": b64(&point[33..])})
    }

    fn sign(&self, header: &Json, claims: &Json) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signature = self.pair.sign(&rng, input.as_bytes()).unwrap();
        format!("{input}.{}", b64(signature.as_ref()))
    }

    /// A token for `sub` with `roles`, valid for an hour, changed by `edit`.
    fn token(&self, sub: &str, roles: Json, edit: impl FnOnce(&mut Json)) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({"iss": ISSUER, "aud": "profile-sync", "sub": sub,
                                "iat": now, "exp": now + 3600, "roles": roles});
        edit(&mut claims);
        self.sign(
            &json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
            &claims,
        )
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn write_jwks(path: &Path, keys: &[Json]) {
    // Written beside and renamed over, as a key rotation would be deployed.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json!({ "keys": keys }).to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn oidc_tokens_are_checked_for_signature_issuer_audience_and_time_and_the_audit_names_the_subject(
) {
    let idp = Provider::new("k1");
    let keys_dir = tempfile::tempdir().unwrap();
    let jwks = keys_dir.path().join("jwks.json");
    write_jwks(&jwks, &[idp.jwk()]);
    let s = Served::start(&format!(
        "serve:\n  oidc:\n    issuer: {ISSUER}\n    audience: profile-sync\n    jwks: {}\n",
        jwks.display()
    ));
    let engine = s.key("engine", "personalization");
    let (user, generated) = s.live_user(&engine).await;
    let segments = format!("/v1/profiles/{user}/segments");

    let support = idp.token("agent-7", json!(["support"]), |_| {});
    assert_eq!(
        s.get(Some(&support), &format!("/v1/profiles/{user}"))
            .await
            .0,
        200
    );
    let r = s
        .post(
            &support,
            &format!("/v1/profiles/{user}/reveal"),
            json!({"fields": ["email"], "reason": "ticket 7"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Json>().await.unwrap()["fields"]["email"],
        generated["email"]
    );
    let reveal = s
        .audit(&user)
        .into_iter()
        .find(|r| r["action"] == "reveal")
        .expect("the reveal is audited");
    assert_eq!(
        reveal["actor"], "oidc:agent-7",
        "the token's subject, not a typed name"
    );

    // The first role of this API in the claim counts; API keys keep working beside tokens.
    let listed = idp.token("engine-2", json!(["viewer", "personalization"]), |_| {});
    assert_eq!(s.get(Some(&listed), &segments).await.0, 200);
    assert_eq!(s.get(Some(&engine), &segments).await.0, 200);
    let (status, problem) = s
        .get(
            Some(&idp.token("nobody", json!("viewer"), |_| {})),
            &segments,
        )
        .await;
    assert_eq!((status, problem["status"].clone()), (403, json!(403)));
    assert_eq!(
        s.get(
            Some(&idp.token("bi", json!(["analyst"]), |_| {})),
            &segments
        )
        .await
        .0,
        403,
        "the role's actions still decide"
    );

    let now = chrono::Utc::now().timestamp();
    let refused: Vec<(&str, String)> =
        vec![
            (
                "expired",
                idp.token("a", json!(["support"]), |c| c["exp"] = json!(now - 3600)),
            ),
            (
                "not yet valid",
                idp.token("a", json!(["support"]), |c| c["nbf"] = json!(now + 3600)),
            ),
            (
                "another issuer",
                idp.token("a", json!(["support"]), |c| {
                    c["iss"] = json!("https://evil.test/")
                }),
            ),
            (
                "another audience",
                idp.token("a", json!(["support"]), |c| c["aud"] = json!("billing")),
            ),
            (
                "no expiry",
                idp.token("a", json!(["support"]), |c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            ),
            (
                "no subject",
                idp.token("a", json!(["support"]), |c| {
                    c.as_object_mut().unwrap().remove("sub");
                }),
            ),
            (
                "an unknown key",
                Provider::new("k9").token("a", json!(["support"]), |_| {}),
            ),
            ("a key it does not hold", {
                // The right kid, signed by another key.
                let other = Provider {
                    kid: "k1".into(),
                    ..Provider::new("x")
                };
                other.token("a", json!(["support"]), |_| {})
            }),
            ("a changed payload", {
                let token = idp.token("a", json!(["personalization"]), |_| {});
                let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
                parts[1] = b64(
                    json!({"iss": ISSUER, "aud": "profile-sync", "sub": "a", "exp": now + 3600,
                       "roles": ["admin"]})
                    .to_string()
                    .as_bytes(),
                );
                parts.join(".")
            }),
            (
                "alg none",
                format!(
                    "{}.{}.",
                    b64(br#"{"alg":"none","kid":"k1"}"#),
                    b64(
                        json!({"iss": ISSUER, "aud": "profile-sync", "sub": "a", "exp": now + 3600,
                       "roles": ["admin"]})
                        .to_string()
                        .as_bytes()
                    )
                ),
            ),
            ("HS256 with the public key as its secret", {
                let input =
                    format!(
                "{}.{}",
                b64(br#"{"alg":"HS256","kid":"k1"}"#),
                b64(json!({"iss": ISSUER, "aud": "profile-sync", "sub": "a", "exp": now + 3600,
                           "roles": ["admin"]}).to_string().as_bytes())
            );
                let secret = std::fs::read(&jwks).unwrap();
                let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
                let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
                format!("{input}.{}", b64(tag.as_ref()))
            }),
            ("garbage", "not.a.token".into()),
        ];
    for (what, token) in &refused {
        let (status, problem) = s.get(Some(token), &segments).await;
        assert_eq!(status, 401, "a token with {what} is refused: {problem}");
        assert_eq!(problem["status"], 401);
    }
    let (_, problem) = s.get(Some(&refused[0].1), &segments).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("expired"),
        "{problem}"
    );

    // A rotation: the provider publishes a new key; tokens signed with it work at once.
    let rotated = Provider::new("k2");
    write_jwks(&jwks, &[idp.jwk(), rotated.jwk()]);
    assert_eq!(
        s.get(
            Some(&rotated.token("a", json!(["personalization"]), |_| {})),
            &segments
        )
        .await
        .0,
        200
    );
}

#[test]
fn an_oidc_section_with_a_shared_secret_key_or_no_issuer_stops_serve_with_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = local_pipeline_text();
    let jwks = dir.path().join("jwks.json");
    let serve = |oidc: &str| {
        let pipeline = dir.path().join("p.yaml");
        std::fs::write(&pipeline, format!("{base}serve:\n  oidc:\n{oidc}")).unwrap();
        bin_std()
            .args(["serve", "--listen", "127.0.0.1:0", "--pipeline"])
            .arg(&pipeline)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap()
    };
    let section = |issuer: &str| {
        format!(
            "    issuer: \"{issuer}\"\n    audience: profile-sync\n    jwks: {}\n",
            jwks.display()
        )
    };
    write_jwks(
        &jwks,
        &[json!({"kty": "oct", "kid": "s", "k": b64(b"a shared secret")})],
    );
    let out = serve(&section(ISSUER));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shared-secret"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    write_jwks(&jwks, &[Provider::new("k1").jwk()]);
    let out = serve(&section(" "));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`issuer` is empty"));

    std::fs::remove_file(&jwks).unwrap();
    let out = serve(&section(ISSUER));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the JWKS file"));
}

async fn a_privacy_officer_exports_and_erases_with_a_reason_and_each_leaves_one_audit_record(
    backend: Backend,
) {
    let s = Served::start_on(backend, "");
    let officer = s.key("dpo", "privacy_officer");
    let support = s.key("support-desk", "support");
    let (user, generated) = s.live_user(&officer).await;
    let export = format!("/v1/profiles/{user}/export");
    let erase = format!("/v1/profiles/{user}/erase");

    // Only the privacy role, and only with a reason.
    assert_eq!(
        s.post(&support, &export, json!({"reason": "x"}))
            .await
            .status(),
        403
    );
    assert_eq!(
        s.post(&support, &erase, json!({"reason": "x"}))
            .await
            .status(),
        403
    );
    assert_eq!(s.post(&officer, &export, json!({})).await.status(), 400);
    assert_eq!(
        s.post(&officer, &erase, json!({"reason": " "}))
            .await
            .status(),
        400
    );
    assert!(s
        .audit(&user)
        .iter()
        .all(|r| r["action"] != "export" && r["action"] != "erase"));

    let r = s
        .post(&officer, &export, json!({"reason": "DSAR 17"}))
        .await;
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let document: Json = r.json().await.unwrap();
    assert_eq!(document["state"], "live");
    assert_eq!(document["profile"]["email"], generated["email"]);
    let exports: Vec<Json> = s
        .audit(&user)
        .into_iter()
        .filter(|r| r["action"] == "export")
        .collect();
    assert_eq!(exports.len(), 1, "{exports:?}");
    assert_eq!(exports[0]["actor"], "api-key:dpo");
    assert_eq!(exports[0]["reason"], "DSAR 17");
    assert_eq!(
        exports[0]["request_id"], request_id,
        "the audit record names the request"
    );

    let analyst = s.key("bi", "analyst");
    let by_id = format!("/v1/search?q=user_id:%22{user}%22");
    let (_, found) = s.get(Some(&analyst), &by_id).await;
    assert_eq!(found["total"].as_u64(), Some(1), "indexed before: {found}");

    let r = s.post(&officer, &erase, json!({"reason": "DSAR 18"})).await;
    assert_eq!(r.status(), 200);
    let erased: Json = r.json().await.unwrap();
    assert_eq!(erased["erased"], true);
    let (status, body) = s.get(Some(&officer), &format!("/v1/profiles/{user}")).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("erased")));
    // Gone from the index the server reads, and the key with it: nothing can be revealed.
    let (status, found) = s.get(Some(&analyst), &by_id).await;
    assert_eq!((status, found["total"].as_u64()), (200, Some(0)), "{found}");
    let r = s
        .post(
            &support,
            &format!("/v1/profiles/{user}/reveal"),
            json!({"fields": ["email"], "reason": "t"}),
        )
        .await;
    assert_eq!(r.status(), 404);
    // The feed tells personalization engines the user left every segment.
    let feed = std::fs::read_to_string(s.data().join("segment-changes.jsonl")).unwrap();
    let last = feed
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .find(|c| c["user_id"] == user.as_str())
        .expect("a segment change for the erased user");
    assert_eq!(last["segments"], json!([]));
    assert_eq!(last["version"], erased["version_fence"]);
    let erasures: Vec<Json> = s
        .audit(&user)
        .into_iter()
        .filter(|r| r["action"] == "erase")
        .collect();
    assert_eq!(erasures.len(), 1, "{erasures:?}");
    assert_eq!(erasures[0]["actor"], "api-key:dpo");
    // Asked again: the same fence, nothing undone.
    let again: Json = s
        .post(&officer, &erase, json!({"reason": "DSAR 18"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["version_fence"], erased["version_fence"]);
}

#[tokio::test]
async fn an_erase_while_a_worker_holds_the_embedded_index_is_refused_with_409_and_erases_nothing() {
    use std::os::fd::AsRawFd;
    let s = Served::start("");
    let officer = s.key("dpo", "privacy_officer");
    let (user, _) = s.live_user(&officer).await;
    // What a running worker does to the index folder: hold its writer lock (flock).
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(s.data().join("index/.tantivy-writer.lock"))
        .unwrap();
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let r = s
        .post(
            &officer,
            &format!("/v1/profiles/{user}/erase"),
            json!({"reason": "DSAR 3"}),
        )
        .await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("ERASE event"));
    let (_, body) = s.get(Some(&officer), &format!("/v1/profiles/{user}")).await;
    assert_eq!(body["state"], "live");
    assert!(s.audit(&user).iter().all(|r| r["action"] != "erase"));
    drop(lock);
    let r = s
        .post(
            &officer,
            &format!("/v1/profiles/{user}/erase"),
            json!({"reason": "DSAR 3"}),
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn requests_about_one_user_are_limited_across_keys_and_other_users_are_not() {
    let s =
        Served::start("serve:\n  rate_limit:\n    per_user_per_second: 1\n    per_user_burst: 2\n");
    let engine = s.key("engine", "personalization");
    let other = s.key("engine-2", "personalization");
    let users: Vec<String> = expected_state(&s.input)
        .into_iter()
        .filter(|(_, e)| !e.deleted)
        .map(|(u, _)| u)
        .take(2)
        .collect();
    let path = |u: &str| format!("/v1/profiles/{u}/segments");
    assert_eq!(s.get(Some(&engine), &path(&users[0])).await.0, 200);
    assert_eq!(s.get(Some(&other), &path(&users[0])).await.0, 200);
    let (status, problem) = s.get(Some(&other), &path(&users[0])).await;
    assert_eq!(status, 429);
    assert!(
        problem["detail"].as_str().unwrap().contains("this user"),
        "{problem}"
    );
    assert_eq!(s.get(Some(&engine), &path(&users[1])).await.0, 200);
}

/// Reads a Prometheus text page.
async fn scrape(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn each_route_has_request_and_latency_metrics_without_ids_and_an_unusual_reveal_rate_is_counted(
) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let (s, _) = Served::start_with(
        "serve:\n  rate_limit:\n    reveal_per_minute: 10\n    unusual_reveals_per_minute: 1\n",
        &["--metrics-addr", &metrics],
    );
    let support = s.key("support-desk", "support");
    let (user, generated) = s.live_user(&support).await;
    let reveal = format!("/v1/profiles/{user}/reveal");
    for _ in 0..2 {
        let r = s
            .post(
                &support,
                &reveal,
                json!({"fields": ["email"], "reason": "t"}),
            )
            .await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("x-request-id"));
    }
    assert_eq!(s.get(None, &format!("/v1/profiles/{user}")).await.0, 401);
    let page = scrape(&format!("http://{metrics}")).await;
    let line = |prefix: &str| {
        page.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {page}"))
            .to_string()
    };
    let reveals = line("profile_sync_api_requests_total{route=\"/v1/profiles/{user_id}/reveal\",method=\"POST\",status=\"200\"}");
    assert!(reveals.ends_with(" 2"), "{reveals}");
    line("profile_sync_api_requests_total{route=\"/v1/profiles/{user_id}\",method=\"GET\",status=\"401\"}");
    line("profile_sync_api_request_seconds_bucket{route=\"/v1/profiles/{user_id}/reveal\",method=\"POST\"");
    let unusual = line("profile_sync_api_unusual_reveal_rate_total{role=\"support\"}");
    assert!(unusual.ends_with(" 1"), "{unusual}");
    assert!(!page.contains(&user), "a user id in the metrics");
    // A lookup (the email in the request) and the reveals (in the answers) leave no PII in the
    // metrics or the server's log, at debug level.
    let email = generated["email"].as_str().unwrap();
    let r = s.lookup(&support, email, "t").await;
    assert_eq!(r.status(), 200);
    let canary = Canary::of_generated(&s.input);
    canary.assert_absent("the metrics", scrape(&format!("http://{metrics}")).await);
    let log = s.log.lock().unwrap().clone();
    assert!(
        log.contains("api request"),
        "the server logs each request: {log}"
    );
    canary.assert_absent("the server's log", log);
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_matches_what_the_routes_answer() {
    let s = Served::start("");
    let doc: Json = reqwest::get(format!("{}/v1/openapi.json", s.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/profiles/{user_id}", "get"),
        ("/v1/profiles/{user_id}/segments", "get"),
        ("/v1/profiles/{user_id}/reveal", "post"),
        ("/v1/profiles/{user_id}/audit", "get"),
        ("/v1/profiles/{user_id}/export", "post"),
        ("/v1/profiles/{user_id}/erase", "post"),
        ("/v1/profiles/lookup", "post"),
        ("/v1/search", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} undocumented"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // The documented shapes are the answered ones.
    let schemas = &doc["components"]["schemas"];
    let properties = |name: &str| -> std::collections::BTreeSet<String> {
        schemas[name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no schema {name}"))
            .keys()
            .cloned()
            .collect()
    };
    let engine = s.key("engine", "personalization");
    let (user, _) = s.live_user(&engine).await;
    let (_, segments) = s
        .get(Some(&engine), &format!("/v1/profiles/{user}/segments"))
        .await;
    let answered: std::collections::BTreeSet<String> =
        segments.as_object().unwrap().keys().cloned().collect();
    assert!(
        answered.is_subset(&properties("SegmentsView")),
        "{answered:?}"
    );
    let (_, problem) = s.get(None, &format!("/v1/profiles/{user}")).await;
    let answered: std::collections::BTreeSet<String> =
        problem.as_object().unwrap().keys().cloned().collect();
    assert_eq!(answered, properties("ProblemDocument"));
}

/// A headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`,
/// installed by `scripts/services`).
struct Browser {
    client: fantoccini::Client,
    driver: Child,
}

impl Browser {
    async fn start() -> Self {
        for program in ["chromium", "chromedriver"] {
            let found = std::process::Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(
                found,
                "`{program}` is not installed: `scripts/services start` installs chromium and chromium-driver for the console's browser test"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        // Two rustls crypto providers are in the tree; WebDriver (plain HTTP here) needs one.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1000"]}),
        );
        let started = std::time::Instant::now();
        let client = loop {
            match fantoccini::ClientBuilder::rustls()
                .unwrap()
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(e) if started.elapsed() < std::time::Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(e) => panic!("chromedriver did not start a browser within 30 s: {e}"),
            }
        };
        Self { client, driver }
    }

    async fn css(&self, selector: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(std::time::Duration::from_secs(20))
            .for_element(fantoccini::Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("no `{selector}` on the page: {e}"))
    }

    async fn fill(&self, selector: &str, text: &str) {
        let input = self.css(selector).await;
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// Waits until the script returns true.
    async fn until(&self, script: &str, what: &str) {
        let started = std::time::Instant::now();
        loop {
            if self.client.execute(script, vec![]).await.unwrap() == json!(true) {
                return;
            }
            if started.elapsed() > std::time::Duration::from_secs(20) {
                let text = self
                    .client
                    .execute("return document.body.innerText", vec![])
                    .await
                    .unwrap();
                panic!("{what} did not happen within 20 s; the page says: {text}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, script: &str) -> Json {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Signs in to the console with `key` and waits until it has (the find form shows).
    async fn sign_in(&self, key: &str) {
        self.fill("#credential", key).await;
        self.css("#sign-in-form button")
            .await
            .click()
            .await
            .unwrap();
        self.until(
            "return !document.getElementById('find').hidden",
            "signing in",
        )
        .await;
    }

    /// Looks up `query` (an email, with `reason`, or a user id) and waits for the profile.
    async fn find(&self, query: &str, reason: &str) {
        self.fill("#query", query).await;
        self.fill("#find-reason", reason).await;
        self.css("#find-form button").await.click().await.unwrap();
        self.until(
            "return !document.getElementById('profile').hidden",
            "the profile",
        )
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test]
async fn the_support_console_finds_a_user_by_email_shows_pii_masked_and_reveals_only_permitted_fields_with_a_reason(
) {
    let s = Served::start("");
    let support = s.key("support-desk", "support");
    let engine = s.key("engine", "personalization");
    let (user, generated) = s.live_user(&support).await;
    let email = generated["email"].as_str().unwrap().to_string();
    let b = Browser::start().await;
    b.client.goto(&format!("{}/console", s.url)).await.unwrap();

    // A wrong key is refused and says so.
    b.fill("#credential", "psk_wrong").await;
    b.css("#sign-in-form button").await.click().await.unwrap();
    b.until(
        "return !document.getElementById('message').hidden",
        "the refusal",
    )
    .await;

    b.sign_in(&support).await;
    assert_eq!(
        b.text("return document.getElementById('who-name').textContent")
            .await,
        json!("api-key:support-desk (support)")
    );
    // A search by email needs a reason.
    b.fill("#query", &email).await;
    b.css("#find-form button").await.click().await.unwrap();
    b.until(
        "return document.getElementById('message').textContent.includes('reason')",
        "the reason prompt",
    )
    .await;
    b.find(&email, "ticket 5").await;
    assert_eq!(
        b.text("return document.getElementById('profile-id').textContent")
            .await,
        json!(user)
    );
    let cell = |field: &str| {
        format!("return (document.querySelector('tr[data-field=\"{field}\"]') || {{cells: [0, {{textContent: null}}]}}).cells[1].textContent")
    };
    assert_eq!(b.text(&cell("email")).await, json!("***"));
    let offered = b
        .text("return [...document.querySelectorAll('tr[data-field]')].filter(r => r.querySelector('button.reveal')).map(r => r.dataset.field)")
        .await;
    let offered: Vec<String> = serde_json::from_value(offered).unwrap();
    assert!(offered.contains(&"email".to_string()), "{offered:?}");
    assert!(
        offered
            .iter()
            .all(|f| ["email", "phone", "display_name"].contains(&f.as_str())),
        "the console offers only what support may reveal: {offered:?}"
    );
    let page = b.client.source().await.unwrap();
    assert!(
        !page.contains(&email),
        "the email is on the page before a reveal"
    );

    b.css("tr[data-field=\"email\"] button.reveal")
        .await
        .click()
        .await
        .unwrap();
    b.fill("#reveal-reason", "ticket 5").await;
    b.css("#reveal-form button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    b.until(
        &format!(
            "return document.querySelector('tr[data-field=\"email\"]').cells[1].textContent === {}",
            json!(email)
        ),
        "the reveal",
    )
    .await;
    if let Ok(dir) = std::env::var("PROFILE_SYNC_SCREENSHOTS") {
        std::fs::write(
            Path::new(&dir).join("console.png"),
            b.client.screenshot().await.unwrap(),
        )
        .unwrap();
    }
    let trail = s.audit(&user);
    let by_console: Vec<&Json> = trail
        .iter()
        .filter(|r| r["actor"] == "api-key:support-desk")
        .collect();
    assert_eq!(by_console.len(), 2, "one lookup and one reveal: {trail:?}");
    assert!(by_console
        .iter()
        .any(|r| r["action"] == "lookup" && r["reason"] == "ticket 5"));
    assert!(by_console
        .iter()
        .any(|r| r["action"] == "reveal" && r["fields"] == json!(["email"])));

    // Another role sees no reveal button at all, and no audit trail.
    b.css("#sign-out").await.click().await.unwrap();
    b.sign_in(&engine).await;
    b.find(&user, "").await;
    assert_eq!(
        b.text("return document.querySelectorAll('button.reveal').length")
            .await,
        json!(0)
    );
    assert_eq!(
        b.text("return document.getElementById('audit-section').hidden")
            .await,
        json!(true)
    );
    assert_eq!(b.text(&cell("email")).await, json!("***"));
    b.client.clone().close().await.unwrap();
}

/// An identity provider's JWKS endpoint: answers every GET with the current key set, and
/// counts the fetches.
struct JwksServer {
    url: String,
    keys: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    fn start(keys: &[Json]) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let set = std::sync::Arc::new(std::sync::Mutex::new(json!({ "keys": keys }).to_string()));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (served, counted) = (set.clone(), fetches.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = served.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self {
            url,
            keys: set,
            fetches,
        }
    }

    fn publish(&self, keys: &[Json]) {
        *self.keys.lock().unwrap() = json!({ "keys": keys }).to_string();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_jwks_url_is_fetched_at_start_and_again_for_a_new_key_at_most_every_30_seconds() {
    let idp = Provider::new("k1");
    let provider = JwksServer::start(&[idp.jwk()]);
    let s = Served::start(&format!(
        "serve:\n  oidc:\n    issuer: {ISSUER}\n    audience: profile-sync\n    jwks: {}\n",
        provider.url
    ));
    assert_eq!(provider.fetches(), 1, "fetched once at start");
    let engine = s.key("engine", "personalization");
    let (user, _) = s.live_user(&engine).await;
    let segments = format!("/v1/profiles/{user}/segments");
    let token = |p: &Provider| p.token("engine-3", json!(["personalization"]), |_| {});
    assert_eq!(s.get(Some(&token(&idp)), &segments).await.0, 200);

    // The provider rotates. Within 30 s of the last fetch, an unknown key is refused without
    // asking the provider again, so a flood of made-up key ids cannot hammer it.
    let rotated = Provider::new("k2");
    provider.publish(&[idp.jwk(), rotated.jwk()]);
    for _ in 0..5 {
        assert_eq!(s.get(Some(&token(&rotated)), &segments).await.0, 401);
    }
    assert_eq!(provider.fetches(), 1);
    // Past the 30 s, the first token naming the new key fetches the set again and is accepted.
    tokio::time::sleep(std::time::Duration::from_secs(31)).await;
    assert_eq!(s.get(Some(&token(&rotated)), &segments).await.0, 200);
    assert_eq!(provider.fetches(), 2);
    assert_eq!(s.get(Some(&token(&idp)), &segments).await.0, 200);
    assert_eq!(provider.fetches(), 2, "known keys need no fetch");
}
