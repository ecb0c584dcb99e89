//! The sandbox end to end: started with `spawn` on 127.0.0.1:0 and driven over HTTP with a
//! real client, like the gateway's own tests will drive it.

use std::time::{Duration, Instant};

use ratepay_gateway::sandbox::{self, SandboxConfig, SandboxHandle};
use reqwest::{header::HeaderMap, Client, StatusCode};
use serde_json::{json, Value};

const TX: &str = "/transaction/management/v2/transactions";

struct Env {
    sb: SandboxHandle,
    http: Client,
    cfg: SandboxConfig,
}

async fn start(cfg: SandboxConfig) -> Env {
    let sb = sandbox::spawn(cfg.clone()).await.expect("sandbox starts");
    Env {
        sb,
        http: Client::new(),
        cfg,
    }
}

fn seeded() -> SandboxConfig {
    SandboxConfig {
        seed: Some(7),
        session_step: Some(Duration::from_secs(3600)),
        ..SandboxConfig::default()
    }
}

struct Res {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    raw: String,
}

async fn finish(r: reqwest::Response) -> Res {
    let status = r.status();
    let headers = r.headers().clone();
    let raw = r.text().await.expect("body");
    let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Res {
        status,
        headers,
        body,
        raw,
    }
}

impl Env {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sb.url())
    }

    async fn token_request(&self, body: Value) -> Res {
        finish(
            self.http
                .post(self.url("/oauth/token"))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn token_for(&self, audience: &str) -> String {
        let r = self
            .token_request(json!({
                "client_id": "local-client",
                "client_secret": "local-sandbox-secret",
                "audience": audience,
                "grant_type": "client_credentials",
            }))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
        r.body["access_token"].as_str().unwrap().to_owned()
    }

    async fn payment_token(&self) -> String {
        self.token_for(&self.cfg.audiences.payment).await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Res {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        finish(req.send().await.unwrap()).await
    }

    async fn get(&self, path: &str, token: &str) -> Res {
        self.call(reqwest::Method::GET, path, token, None, &[])
            .await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Res {
        self.call(reqwest::Method::POST, path, token, Some(body), &[])
            .await
    }

    async fn authorize(&self, token: &str, amount: f64, extra: &[(&str, &str)]) -> Res {
        self.call(
            reqwest::Method::POST,
            TX,
            token,
            Some(auth_body(amount, "buyer@example.org")),
            extra,
        )
        .await
    }

    async fn stats(&self) -> Value {
        finish(
            self.http
                .get(self.url("/_sandbox/stats"))
                .send()
                .await
                .unwrap(),
        )
        .await
        .body
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Res {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        finish(req.send().await.unwrap()).await
    }

    async fn fault(&self, f: Value) {
        let r = self
            .control(reqwest::Method::POST, "/_sandbox/faults", Some(f))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
    }
}

fn auth_body(amount: f64, email: &str) -> Value {
    json!({
        "buyer": {
            "billing_address": {"city": "Berlin", "country_code": "DE", "street": "Schönhauser Allee", "street_number": "84", "zip_code": "10439"},
            "contact": {"email": email, "phone": "+49 170 1234567"},
            "person": {"first_name": "Heinz", "last_name": "Steeger", "date_of_birth": "1971-05-19"},
            "shop_buyer_id": "buyer-1"
        },
        "currency": "EUR",
        "partner_transaction_id": "order-1",
        "payment_method": {"transfer_type": "BANK_TRANSFER"},
        "shop_baskets": [{"gross_amount": amount}]
    })
}

fn tx_id(r: &Res) -> String {
    r.body["ratepay_transaction_id"]
        .as_str()
        .expect("transaction id")
        .to_owned()
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .map(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn token_flow_good_and_bad_credentials() {
    let env = start(seeded()).await;
    let aud = env.cfg.audiences.payment.clone();
    let good = env
        .token_request(json!({"client_id": "local-client", "client_secret": "local-sandbox-secret", "audience": aud, "grant_type": "client_credentials"}))
        .await;
    assert_eq!(good.status, StatusCode::OK);
    assert_eq!(good.body["token_type"], "Bearer");
    assert_eq!(good.body["expires_in"], 1800);
    assert_eq!(
        good.body["access_token"]
            .as_str()
            .unwrap()
            .split('.')
            .count(),
        3
    );

    let bad_secret = env
        .token_request(json!({"client_id": "local-client", "client_secret": "nope", "audience": aud, "grant_type": "client_credentials"}))
        .await;
    assert_eq!(bad_secret.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bad_secret.body["error"], "invalid_client");
    let bad_client = env
        .token_request(json!({"client_id": "who", "client_secret": "local-sandbox-secret", "audience": aud, "grant_type": "client_credentials"}))
        .await;
    assert_eq!(bad_client.status, StatusCode::UNAUTHORIZED);
    let bad_aud = env
        .token_request(json!({"client_id": "local-client", "client_secret": "local-sandbox-secret", "audience": "https://evil.example", "grant_type": "client_credentials"}))
        .await;
    assert_eq!(bad_aud.status, StatusCode::UNAUTHORIZED);
    let bad_grant = env
        .token_request(json!({"client_id": "local-client", "client_secret": "local-sandbox-secret", "audience": aud, "grant_type": "password"}))
        .await;
    assert_eq!(bad_grant.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_grant.body["error"], "unsupported_grant_type");
    let missing = env
        .token_request(json!({"client_id": "local-client"}))
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    let malformed = finish(
        env.http
            .post(env.url("/oauth/token"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    let form = finish(
        env.http
            .post(env.url("/oauth/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(form.status, StatusCode::BAD_REQUEST);
    // The secret never appears in an answer.
    assert!(!bad_client.raw.contains("local-sandbox-secret"));

    let stats = env.stats().await;
    assert_eq!(stats["token_requests"], 8);
    assert_eq!(stats["tokens_issued"], 1);
    assert_eq!(stats["tokens_issued_by_audience"][&aud], 1);
    assert_eq!(stats["requests_total"], 0);
}

#[tokio::test]
async fn api_calls_need_a_valid_token_for_their_own_audience() {
    let env = start(seeded()).await;
    let path = format!("{TX}/AAAAAAAAAAAAAAAAAAAA");
    let none = finish(env.http.get(env.url(&path)).send().await.unwrap()).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(none.body["error"].is_string());
    assert!(none.headers.contains_key("www-authenticate"));
    assert_eq!(
        env.get(&path, "garbage").await.status,
        StatusCode::UNAUTHORIZED
    );

    let status_token = env.token_for(&env.cfg.audiences.status).await;
    let hpp_token = env.token_for(&env.cfg.audiences.hpp).await;
    let pay_token = env.payment_token().await;
    let wrong = env.get(&path, &status_token).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body["error_description"]
        .as_str()
        .unwrap()
        .contains("audience"));
    assert_eq!(
        env.get(&path, &hpp_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        env.get(
            "/transaction/status/v2/transactions/AAAAAAAAAAAAAAAAAAAA",
            &pay_token
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        env.get(
            "/pps/api/v1/session-record/AAAAAAAAAAAAAAAAAAAA",
            &pay_token
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    // With the right token the same path gets past authentication (unknown transaction: 404).
    assert_eq!(
        env.get(&path, &pay_token).await.status,
        StatusCode::NOT_FOUND
    );

    // Every one of those calls was counted, rejected or not.
    let stats = env.stats().await;
    assert_eq!(stats["requests"]["payment.transactions.get"], 5);
    assert_eq!(stats["requests"]["status.transactions.get"], 1);
    assert_eq!(stats["requests"]["hpp.session_records.get"], 1);
    assert_eq!(stats["requests_total"], 7);
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    // A zero lifetime makes tokens expired at birth: `exp == iat`, and `exp` itself is expired.
    let env = start(SandboxConfig {
        token_lifetime: Duration::ZERO,
        ..seeded()
    })
    .await;
    let tok = env.payment_token().await;
    let r = env.get(&format!("{TX}/AAAAAAAAAAAAAAAAAAAA"), &tok).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body["error_description"]
        .as_str()
        .unwrap()
        .contains("expired"));
}

#[tokio::test]
async fn a_transaction_through_its_whole_life() {
    let env = start(seeded()).await;
    let tok = env.payment_token().await;

    let auth = env.authorize(&tok, 100.0, &[]).await;
    assert_eq!(auth.status, StatusCode::CREATED, "{}", auth.raw);
    assert_eq!(auth.headers["content-type"], "application/hal+json");
    let id = tx_id(&auth);
    assert_eq!(id.len(), 20);
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    assert_eq!(auth.body["_links"]["self"]["href"], format!("{TX}/{id}"));
    assert!(is_rfc3339(&auth.body["created"]));

    let base = format!("{TX}/{id}");
    let got = env.get(&base, &tok).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["status"], "AUTHORIZED");
    assert_eq!(got.body["amounts"]["authorized"], 100.0);
    assert_eq!(got.body["partner_transaction_id"], "order-1");

    // Incremental authorization.
    let inc = env
        .post(
            &format!("{base}/authorizations"),
            &tok,
            json!({"gross_amount": 20.5}),
        )
        .await;
    assert_eq!(inc.status, StatusCode::CREATED, "{}", inc.raw);
    let auth_id = inc.body["ratepay_authorization_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(is_rfc3339(&inc.body["created"]));
    let auths = env.get(&format!("{base}/authorizations"), &tok).await;
    assert_eq!(
        auths.body["_embedded"]["authorizations"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(auths.body["ratepay_transaction_id"], id.as_str());
    let one = env
        .get(&format!("{base}/authorizations/{auth_id}"), &tok)
        .await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body["gross_amount"], 20.5);

    // Capture with items, then shipping information.
    let cap = env
        .post(
            &format!("{base}/captures"),
            &tok,
            json!({"gross_amount": 60.0, "items": [{"gross_unit_price": 30.0, "quantity": 2, "name": "knife"}]}),
        )
        .await;
    assert_eq!(cap.status, StatusCode::CREATED, "{}", cap.raw);
    let cap_id = cap.body["ratepay_capture_id"].as_str().unwrap().to_owned();
    assert_eq!(
        cap.body["_links"]["self"]["href"],
        format!("{base}/captures/{cap_id}")
    );
    let ship = env
        .post(
            &format!("{base}/captures/{cap_id}/shipping-information"),
            &tok,
            json!({"carrier": "DHL", "tracking_number": "00340434161094042557"}),
        )
        .await;
    assert_eq!(ship.status, StatusCode::CREATED, "{}", ship.raw);
    let cap_get = env.get(&format!("{base}/captures/{cap_id}"), &tok).await;
    assert_eq!(cap_get.body["shipping_information"][0]["carrier"], "DHL");
    assert_eq!(
        env.post(
            &format!("{base}/captures/AAAAAAAAAAAAAAAAAAAA/shipping-information"),
            &tok,
            json!({"carrier": "DHL"})
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        env.get(&format!("{base}/captures"), &tok).await.body["_embedded"]["captures"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Refund part of the capture.
    let refund = env
        .post(
            &format!("{base}/refunds"),
            &tok,
            json!({"gross_amount": 10.0}),
        )
        .await;
    assert_eq!(refund.status, StatusCode::CREATED, "{}", refund.raw);
    let refund_id = refund.body["ratepay_refund_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        env.get(&format!("{base}/refunds/{refund_id}"), &tok)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        env.get(&format!("{base}/refunds"), &tok).await.body["_embedded"]["refunds"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Partial, then full cancellation of what is open (120.50 - 60 = 60.50).
    let c1 = env
        .post(
            &format!("{base}/cancellations"),
            &tok,
            json!({"gross_amount": 0.5, "partner_operation_id": "cancel-1"}),
        )
        .await;
    assert_eq!(c1.status, StatusCode::CREATED, "{}", c1.raw);
    let c1_id = c1.body["ratepay_cancellation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let c2 = env
        .post(
            &format!("{base}/cancellations"),
            &tok,
            json!({"gross_amount": 60.0}),
        )
        .await;
    assert_eq!(c2.status, StatusCode::CREATED, "{}", c2.raw);
    let c1_get = env
        .get(&format!("{base}/cancellations/{c1_id}"), &tok)
        .await;
    assert_eq!(c1_get.body["partner_operation_id"], "cancel-1");
    assert_eq!(c1_get.body["gross_amount"], 0.5);
    assert_eq!(
        env.get(&format!("{base}/cancellations/AAAAAAAAAAAAAAAAAAAA"), &tok)
            .await
            .body["reasons"][0],
        "CANCELLATION_NOT_FOUND"
    );
    let list = env.get(&format!("{base}/cancellations"), &tok).await;
    assert_eq!(
        list.body["_embedded"]["cancellations"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let done = env.get(&base, &tok).await;
    assert_eq!(done.body["amounts"]["authorized"], 120.5);
    assert_eq!(done.body["amounts"]["captured"], 60.0);
    assert_eq!(done.body["amounts"]["refunded"], 10.0);
    assert_eq!(done.body["amounts"]["cancelled"], 60.5);
    assert_eq!(done.body["amounts"]["open"], 0.0);
    assert_eq!(done.body["status"], "CAPTURED");
    assert_eq!(
        done.body["_embedded"]["captures"].as_array().unwrap().len(),
        1
    );

    // Change: authorization_expires.
    let later = in_days(90);
    let patched = env
        .call(
            reqwest::Method::PATCH,
            &base,
            &tok,
            Some(json!({"authorization_expires": later})),
            &[],
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.raw);
    assert_eq!(patched.body["authorization_expires"], later);
    let bad_patch = env
        .call(
            reqwest::Method::PATCH,
            &base,
            &tok,
            Some(json!({"authorization_expires": "tomorrow"})),
            &[],
        )
        .await;
    assert_eq!(bad_patch.status, StatusCode::BAD_REQUEST);

    // Prefer: return=representation gives the full resource on create.
    let rep = env
        .call(
            reqwest::Method::POST,
            TX,
            &tok,
            Some(auth_body(5.0, "a@example.org")),
            &[("prefer", "return=representation")],
        )
        .await;
    assert_eq!(rep.status, StatusCode::CREATED);
    assert_eq!(rep.body["amounts"]["authorized"], 5.0);
}

/// `authorization_expires` `days` from now (negative: in the past), whole seconds in UTC so that
/// the sandbox echoes exactly this text.
fn in_days(days: i64) -> String {
    let now = time::OffsetDateTime::now_utc();
    let t = now.replace_nanosecond(0).unwrap_or(now) + time::Duration::days(days);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn assert_invalid_expiry(r: &Res, needle: &str) {
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.raw);
    assert_eq!(r.body["category"], "SYNTAX", "{}", r.raw);
    assert_eq!(r.body["reasons"], json!(["INVALID_FIELDS"]), "{}", r.raw);
    assert_eq!(
        r.body["invalid_fields"][0]["json_path"], "$.authorization_expires",
        "{}",
        r.raw
    );
    let msg = r.body["invalid_fields"][0]["message"]
        .as_str()
        .unwrap_or("");
    assert!(msg.contains(needle), "{needle:?} not in {}", r.raw);
}

#[tokio::test]
async fn past_far_or_malformed_authorization_expires_is_refused() {
    let env = start(seeded()).await;
    let tok = env.payment_token().await;
    let auth = env.authorize(&tok, 50.0, &[]).await;
    assert_eq!(auth.status, StatusCode::CREATED, "{}", auth.raw);
    let base = format!("{TX}/{}", tx_id(&auth));
    let expires_before = auth.body["authorization_expires"].clone();
    let patch = |v: Value| {
        env.call(
            reqwest::Method::PATCH,
            &base,
            &tok,
            Some(json!({ "authorization_expires": v })),
            &[],
        )
    };

    // Yesterday would make every later capture a decline for an expired transaction.
    assert_invalid_expiry(&patch(json!(in_days(-1))).await, "future");
    let far = sandbox::MAX_EXPIRY_DAYS + 1;
    assert_invalid_expiry(&patch(json!(in_days(far))).await, "days in the future");
    for bad in [
        json!("tomorrow"),
        json!("2027-01-01T00:00:00"),
        json!("2027-01-01"),
        json!(1_900_000_000),
        Value::Null,
    ] {
        assert_invalid_expiry(&patch(bad).await, "ISO 8601");
    }

    // Nothing of the refused changes stuck: the expiry is as before and a capture works.
    let got = env.get(&base, &tok).await;
    assert_eq!(got.body["authorization_expires"], expires_before);
    let cap = env
        .post(
            &format!("{base}/captures"),
            &tok,
            json!({"gross_amount": 10}),
        )
        .await;
    assert_eq!(cap.status, StatusCode::CREATED, "{}", cap.raw);

    let later = in_days(10);
    let ok = patch(json!(later)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.raw);
    assert_eq!(ok.body["authorization_expires"], later);

    // The same rule holds when the transaction is created.
    let mut body = auth_body(5.0, "buyer@example.org");
    body["authorization_expires"] = json!(in_days(-1));
    assert_invalid_expiry(&env.post(TX, &tok, body).await, "future");
}

#[tokio::test]
async fn amounts_cannot_exceed_what_is_open_or_captured() {
    let env = start(seeded()).await;
    let tok = env.payment_token().await;
    let id = tx_id(&env.authorize(&tok, 50.0, &[]).await);
    let base = format!("{TX}/{id}");

    let over_capture = env
        .post(
            &format!("{base}/captures"),
            &tok,
            json!({"gross_amount": 50.01}),
        )
        .await;
    assert_eq!(over_capture.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(over_capture.body["category"], "UNPROCESSABLE_OPERATION");
    assert_eq!(over_capture.body["reasons"][0], "CAPTURE_AMOUNT_TOO_HIGH");
    let early_refund = env
        .post(&format!("{base}/refunds"), &tok, json!({"gross_amount": 1}))
        .await;
    assert_eq!(early_refund.body["reasons"][0], "REFUND_AMOUNT_TOO_HIGH");
    assert_eq!(
        env.post(
            &format!("{base}/captures"),
            &tok,
            json!({"gross_amount": 30})
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let over_cancel = env
        .post(
            &format!("{base}/cancellations"),
            &tok,
            json!({"gross_amount": 20.01}),
        )
        .await;
    assert_eq!(over_cancel.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        over_cancel.body["reasons"][0],
        "CANCELLATION_AMOUNT_TOO_HIGH"
    );
    let over_refund = env
        .post(
            &format!("{base}/refunds"),
            &tok,
            json!({"gross_amount": 30.01}),
        )
        .await;
    assert_eq!(over_refund.body["reasons"][0], "REFUND_AMOUNT_TOO_HIGH");
    let mismatch = env
        .post(
            &format!("{base}/captures"),
            &tok,
            json!({"gross_amount": 10, "items": [{"gross_unit_price": 9.99}]}),
        )
        .await;
    assert_eq!(mismatch.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        mismatch.body["reasons"][0],
        "SUM_OF_ITEM_AMOUNTS_NOT_MATCHING_OPERATION_AMOUNT"
    );

    // Refusals changed nothing.
    let t = env.get(&base, &tok).await;
    assert_eq!(t.body["amounts"]["captured"], 30.0);
    assert_eq!(t.body["amounts"]["cancelled"], 0.0);
    assert_eq!(t.body["amounts"]["refunded"], 0.0);

    // Syntax: amounts > 0 with at most two decimals, valid JSON, JSON content type.
    for bad in [json!(0), json!(-1), json!(1.234), json!("10"), Value::Null] {
        let r = env
            .post(
                &format!("{base}/cancellations"),
                &tok,
                json!({"gross_amount": bad}),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.body["reasons"][0], "INVALID_FIELDS", "{bad}");
        assert_eq!(r.body["invalid_fields"][0]["json_path"], "$.gross_amount");
    }
    let missing = env
        .post(&format!("{base}/cancellations"), &tok, json!({}))
        .await;
    assert_eq!(missing.body["reasons"][0], "INVALID_FIELDS");
    let bad_auth = env
        .post(TX, &tok, json!({"currency": "eur", "shop_baskets": []}))
        .await;
    assert_eq!(bad_auth.status, StatusCode::BAD_REQUEST);
    assert!(bad_auth.body["invalid_fields"].as_array().unwrap().len() >= 3);
    let basket_mismatch = env
        .post(TX, &tok, {
            let mut b = auth_body(10.0, "x@example.org");
            b["shop_baskets"][0]["items"] = json!([{"gross_unit_price": 4.0, "quantity": 2}]);
            b
        })
        .await;
    assert_eq!(basket_mismatch.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        basket_mismatch.body["reasons"][0],
        "SUM_OF_ITEM_AMOUNTS_NOT_MATCHING_TRANSACTION_AMOUNT"
    );

    let malformed = finish(
        env.http
            .post(env.url(&format!("{base}/captures")))
            .bearer_auth(&tok)
            .header("content-type", "application/json")
            .body("{\"gross_amount\": ")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.body["reasons"][0], "INVALID_JSON");
    let not_json = finish(
        env.http
            .post(env.url(&format!("{base}/captures")))
            .bearer_auth(&tok)
            .header("content-type", "text/plain")
            .body("gross_amount=1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(not_json.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = finish(
        env.http
            .post(env.url(&format!("{base}/captures")))
            .bearer_auth(&tok)
            .header("content-type", "application/json")
            .body(vec![b' '; 2 * 1024 * 1024])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);

    let unknown = env.get(&format!("{TX}/AAAAAAAAAAAAAAAAAAAA"), &tok).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["reasons"][0], "TRANSACTION_NOT_FOUND");
    let unknown_capture = env
        .post(
            &format!("{TX}/AAAAAAAAAAAAAAAAAAAA/captures"),
            &tok,
            json!({"gross_amount": 1}),
        )
        .await;
    assert_eq!(unknown_capture.status, StatusCode::NOT_FOUND);
    let bad_path = env.get(&format!("{TX}/a.b"), &tok).await;
    assert_eq!(bad_path.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn otp_required_then_verified() {
    let env = start(seeded()).await;
    let tok = env.payment_token().await;
    let r = env
        .post(TX, &tok, auth_body(40.0, "otp_required@ratepay.com"))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.raw);
    assert_eq!(r.body["result"], "OTP_REQUIRED");
    let id = tx_id(&r);
    let base = format!("{TX}/{id}");
    assert_eq!(env.get(&base, &tok).await.body["status"], "OTP_PENDING");
    let early = env
        .post(
            &format!("{base}/captures"),
            &tok,
            json!({"gross_amount": 1}),
        )
        .await;
    assert_eq!(early.status, StatusCode::UNPROCESSABLE_ENTITY);

    let otp = "/transaction/management/2fa/v1";
    let regen = env
        .call(
            reqwest::Method::POST,
            &format!("{otp}/regenerate/{id}"),
            &tok,
            None,
            &[],
        )
        .await;
    assert_eq!(regen.status, StatusCode::OK, "{}", regen.raw);
    assert_eq!(regen.body["result"], "otp_sent");
    let wrong = env
        .post(
            &format!("{otp}/verify/{id}"),
            &tok,
            json!({"otp_code": "000000"}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong.body["result"], "verify_attempt_failed");
    let right = env
        .post(
            &format!("{otp}/verify/{id}"),
            &tok,
            json!({"otp_code": sandbox::OTP_CODE}),
        )
        .await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.raw);
    assert_eq!(right.body["result"], "otp_verified");
    assert_eq!(right.body["ratepay_transaction_id"], id.as_str());
    let after = env.get(&base, &tok).await;
    assert_eq!(after.body["status"], "AUTHORIZED");
    assert_eq!(after.body["amounts"]["authorized"], 40.0);
    assert_eq!(
        env.post(
            &format!("{base}/captures"),
            &tok,
            json!({"gross_amount": 40})
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let again = env
        .post(
            &format!("{otp}/verify/{id}"),
            &tok,
            json!({"otp_code": sandbox::OTP_CODE}),
        )
        .await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = env
        .post(
            &format!("{otp}/verify/AAAAAAAAAAAAAAAAAAAA"),
            &tok,
            json!({"otp_code": "1"}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["result"], "transaction_not_found");
}

#[tokio::test]
async fn test_emails_decline_and_declined_transactions_refuse_follow_ups() {
    let env = start(seeded()).await;
    let tok = env.payment_token().await;
    let r = env
        .post(TX, &tok, auth_body(40.0, "risk_decision@ratepay.com"))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["category"], "RISK_DECISION");
    let id = tx_id(&r);
    let cap = env
        .post(
            &format!("{TX}/{id}/captures"),
            &tok,
            json!({"gross_amount": 1}),
        )
        .await;
    assert_eq!(
        cap.body["reasons"][0],
        "NOT_ALLOWED_FOR_DECLINED_TRANSACTION"
    );
}

#[tokio::test]
async fn idempotent_replay_and_conflict() {
    let env = start(seeded()).await;
    let tok = env.payment_token().await;
    let id = tx_id(&env.authorize(&tok, 100.0, &[]).await);
    let caps = format!("{TX}/{id}/captures");
    let key = [("idempotency-key", "0f6d1c5e-4c7b-4d0e-9a59-0d3b6a8f7e21")];
    let first = env
        .call(
            reqwest::Method::POST,
            &caps,
            &tok,
            Some(json!({"gross_amount": 10})),
            &key,
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let replay = env
        .call(
            reqwest::Method::POST,
            &caps,
            &tok,
            Some(json!({"gross_amount": 10})),
            &key,
        )
        .await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.raw, first.raw, "exactly the same body");
    assert_eq!(
        replay.headers["content-type"],
        first.headers["content-type"]
    );
    let conflict = env
        .call(
            reqwest::Method::POST,
            &caps,
            &tok,
            Some(json!({"gross_amount": 11})),
            &key,
        )
        .await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    let other_partner = env
        .call(
            reqwest::Method::POST,
            &caps,
            &tok,
            Some(json!({"gross_amount": 10})),
            &[key[0], ("x-partner", "p")],
        )
        .await;
    assert_eq!(other_partner.status, StatusCode::CONFLICT);
    assert_eq!(
        env.get(&caps, &tok).await.body["_embedded"]["captures"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A 4xx answer is stored too: the same request replays the 422 even after it would pass.
    let k2 = [("idempotency-key", "k2")];
    let refused = env
        .call(
            reqwest::Method::POST,
            &caps,
            &tok,
            Some(json!({"gross_amount": 95})),
            &k2,
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    env.post(
        &format!("{TX}/{id}/authorizations"),
        &tok,
        json!({"gross_amount": 10}),
    )
    .await;
    let replayed = env
        .call(
            reqwest::Method::POST,
            &caps,
            &tok,
            Some(json!({"gross_amount": 95})),
            &k2,
        )
        .await;
    assert_eq!(replayed.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(replayed.raw, refused.raw);

    // Keys are per OAuth client: another client's same key is a fresh call.
    let long_key = "k".repeat(65);
    let bad_key = env
        .call(
            reqwest::Method::POST,
            &caps,
            &tok,
            Some(json!({"gross_amount": 1})),
            &[("idempotency-key", long_key.as_str())],
        )
        .await;
    assert_eq!(bad_key.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn idempotency_is_scoped_per_client() {
    let mut cfg = seeded();
    cfg.clients.push(sandbox::SandboxClient {
        client_id: "second".into(),
        client_secret: "second-secret".to_owned().into(),
    });
    let env = start(cfg).await;
    let tok1 = env.payment_token().await;
    let tok2 = finish(
        env.http
            .post(env.url("/oauth/token"))
            .json(&json!({"client_id": "second", "client_secret": "second-secret", "audience": env.cfg.audiences.payment, "grant_type": "client_credentials"}))
            .send()
            .await
            .unwrap(),
    )
    .await
    .body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = [("idempotency-key", "same")];
    let a = env
        .call(
            reqwest::Method::POST,
            TX,
            &tok1,
            Some(auth_body(1.0, "a@example.org")),
            &key,
        )
        .await;
    let b = env
        .call(
            reqwest::Method::POST,
            TX,
            &tok2,
            Some(auth_body(1.0, "a@example.org")),
            &key,
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(b.status, StatusCode::CREATED);
    assert_ne!(tx_id(&a), tx_id(&b));
    // And one client cannot see the other's transaction.
    assert_eq!(
        env.get(&format!("{TX}/{}", tx_id(&a)), &tok2).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn server_error_is_not_stored_and_the_retry_executes() {
    let env = start(seeded()).await;
    let tok = env.payment_token().await;
    let id = tx_id(&env.authorize(&tok, 100.0, &[]).await);
    let caps = format!("{TX}/{id}/captures");
    env.fault(json!({"operation": "payment.captures.create", "status": 503, "count": 1}))
        .await;
    let key = [("idempotency-key", "retry-me")];
    let first = env
        .call(
            reqwest::Method::POST,
            &caps,
            &tok,
            Some(json!({"gross_amount": 10})),
            &key,
        )
        .await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        env.get(&caps, &tok).await.body["_embedded"]["captures"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let retry = env
        .call(
            reqwest::Method::POST,
            &caps,
            &tok,
            Some(json!({"gross_amount": 10})),
            &key,
        )
        .await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(
        env.get(&caps, &tok).await.body["_embedded"]["captures"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(env.stats().await["requests"]["payment.captures.create"], 2);
}

#[tokio::test]
async fn concurrent_duplicates_execute_once() {
    let env = start(seeded()).await;
    let tok = env.payment_token().await;
    let id = tx_id(&env.authorize(&tok, 100.0, &[]).await);
    let caps = format!("{TX}/{id}/captures");
    // The first call holds its key for 300 ms; the duplicates arrive meanwhile and must wait.
    env.fault(json!({"operation": "payment.captures.create", "latency_ms": 300, "count": 1}))
        .await;
    let key = [("idempotency-key", "concurrent")];
    let calls = (0..5).map(|_| {
        env.call(
            reqwest::Method::POST,
            &caps,
            &tok,
            Some(json!({"gross_amount": 10})),
            &key,
        )
    });
    let results = futures_util::future::join_all(calls).await;
    for r in &results {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
        assert_eq!(r.raw, results[0].raw);
    }
    assert_eq!(
        env.get(&caps, &tok).await.body["_embedded"]["captures"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(env.stats().await["requests"]["payment.captures.create"], 5);
}

#[tokio::test]
async fn partners_do_not_see_each_others_transactions() {
    let env = start(seeded()).await;
    let tok = env.payment_token().await;
    let id = tx_id(&env.authorize(&tok, 10.0, &[("x-partner", "brand-a")]).await);
    let base = format!("{TX}/{id}");
    let as_a = [("x-partner", "brand-a")];
    let as_b = [("x-partner", "brand-b")];
    assert_eq!(
        env.call(reqwest::Method::GET, &base, &tok, None, &as_a)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        env.call(reqwest::Method::GET, &base, &tok, None, &as_b)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(env.get(&base, &tok).await.status, StatusCode::NOT_FOUND);
    let cap_b = env
        .call(
            reqwest::Method::POST,
            &format!("{base}/captures"),
            &tok,
            Some(json!({"gross_amount": 1})),
            &as_b,
        )
        .await;
    assert_eq!(cap_b.status, StatusCode::NOT_FOUND);
    let status_tok = env.token_for(&env.cfg.audiences.status).await;
    let st = format!("/transaction/status/v2/transactions/{id}");
    assert_eq!(
        env.call(reqwest::Method::GET, &st, &status_tok, None, &as_b)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        env.call(reqwest::Method::GET, &st, &status_tok, None, &as_a)
            .await
            .status,
        StatusCode::OK
    );

    // A transaction created without a partner is invisible under any partner.
    let plain = tx_id(&env.authorize(&tok, 10.0, &[]).await);
    assert_eq!(
        env.call(
            reqwest::Method::GET,
            &format!("{TX}/{plain}"),
            &tok,
            None,
            &as_a
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn status_api_reports_status_and_amounts() {
    let env = start(seeded()).await;
    let tok = env.payment_token().await;
    let id = tx_id(&env.authorize(&tok, 80.0, &[]).await);
    env.post(
        &format!("{TX}/{id}/captures"),
        &tok,
        json!({"gross_amount": 30}),
    )
    .await;
    let st_tok = env.token_for(&env.cfg.audiences.status).await;
    let r = env
        .get(
            &format!("/transaction/status/v2/transactions/{id}"),
            &st_tok,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(r.body["ratepay_transaction_id"], id.as_str());
    assert_eq!(r.body["status"], "PARTIALLY_CAPTURED");
    assert_eq!(r.body["currency"], "EUR");
    assert_eq!(r.body["shop_buyer_id"], "buyer-1");
    assert_eq!(r.body["amounts"]["captured"], 30.0);
    assert_eq!(r.body["amounts"]["open"], 50.0);
    assert_eq!(r.body["shop_baskets"][0]["gross_amount"], 80.0);
    assert_eq!(
        env.get(
            "/transaction/status/v2/transactions/AAAAAAAAAAAAAAAAAAAA",
            &st_tok
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

async fn create_session(env: &Env, tok: &str, extra: &[(&str, &str)]) -> String {
    let r = env
        .call(
            reqwest::Method::POST,
            "/pps/api/v1/session",
            tok,
            Some(json!({"order_data": {"partner_transaction_id": "12345", "buyer": {"shop_buyer_id": "b-9"}, "currency": "EUR", "shop_baskets": [{"gross_amount": 43.8}]}})),
            extra,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
    r.body["session_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn hpp_sessions_and_records() {
    let env = start(seeded()).await;
    let tok = env.token_for(&env.cfg.audiences.hpp).await;
    let sid = create_session(&env, &tok, &[]).await;
    let rec = env
        .get(&format!("/pps/api/v1/session-record/{sid}"), &tok)
        .await;
    assert_eq!(rec.status, StatusCode::OK);
    assert_eq!(rec.body["session_id"], sid.as_str());
    assert_eq!(rec.body["session_status"], "CREATED");
    assert_eq!(rec.body["partner_transaction_id"], "12345");
    assert_eq!(rec.body["shop_buyer_id"], "b-9");
    assert!(is_rfc3339(&rec.body["created_date"]));
    assert!(is_rfc3339(&rec.body["updated_date"]));

    let today = time::OffsetDateTime::now_utc().date();
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let by_date = env
        .get(
            &format!(
                "/pps/api/v1/session-record?createdDate={}",
                today.format(&fmt).unwrap()
            ),
            &tok,
        )
        .await;
    assert_eq!(by_date.status, StatusCode::OK);
    let list = by_date.body.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["session_id"], sid.as_str());
    let other_day = env
        .get("/pps/api/v1/session-record?createdDate=2001-01-01", &tok)
        .await;
    assert_eq!(other_day.body, json!([]));
    assert_eq!(
        env.get("/pps/api/v1/session-record?createdDate=2024-13-01", &tok)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        env.get("/pps/api/v1/session-record", &tok).await.status,
        StatusCode::BAD_REQUEST
    );

    let set = env
        .control(
            reqwest::Method::POST,
            &format!("/_sandbox/sessions/{sid}"),
            Some(json!({"session_status": "EXPIRED"})),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(
        env.get(&format!("/pps/api/v1/session-record/{sid}"), &tok)
            .await
            .body["session_status"],
        "EXPIRED"
    );
    let bad = env
        .control(
            reqwest::Method::POST,
            &format!("/_sandbox/sessions/{sid}"),
            Some(json!({"session_status": "DONE"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let unknown = env
        .control(
            reqwest::Method::POST,
            "/_sandbox/sessions/nope",
            Some(json!({"session_status": "EXPIRED"})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(
        env.get("/pps/api/v1/session-record/AAAAAAAAAAAAAAAAAAAA", &tok)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        env.post("/pps/api/v1/session", &tok, json!({"nothing": 1}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    // Partner-scoped like transactions.
    let psid = create_session(&env, &tok, &[("x-partner", "brand-a")]).await;
    let path = format!("/pps/api/v1/session-record/{psid}");
    assert_eq!(env.get(&path, &tok).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        env.call(
            reqwest::Method::GET,
            &path,
            &tok,
            None,
            &[("x-partner", "brand-b")]
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        env.call(
            reqwest::Method::GET,
            &path,
            &tok,
            None,
            &[("x-partner", "brand-a")]
        )
        .await
        .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn hpp_sessions_progress_per_read_with_zero_step() {
    let env = start(SandboxConfig {
        session_step: Some(Duration::ZERO),
        ..seeded()
    })
    .await;
    let tok = env.token_for(&env.cfg.audiences.hpp).await;
    let sid = create_session(&env, &tok, &[]).await;
    let path = format!("/pps/api/v1/session-record/{sid}");
    let mut seen = Vec::new();
    let mut last = Value::Null;
    for _ in 0..4 {
        last = env.get(&path, &tok).await.body;
        seen.push(last["session_status"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["CREATED", "IN_PROGRESS", "COMPLETED", "COMPLETED"]);
    assert_eq!(last["transaction_id"].as_str().unwrap().len(), 20);
    // A status set by a test sticks, progression or not.
    env.control(
        reqwest::Method::POST,
        &format!("/_sandbox/sessions/{sid}"),
        Some(json!({"session_status": "CANCELED"})),
    )
    .await;
    assert_eq!(
        env.get(&path, &tok).await.body["session_status"],
        "CANCELED"
    );
    assert_eq!(
        env.get(&path, &tok).await.body["session_status"],
        "CANCELED"
    );
}

#[tokio::test]
async fn faults_status_retry_after_latency_and_close() {
    let env = start(seeded()).await;
    let tok = env.payment_token().await;
    let id = tx_id(&env.authorize(&tok, 100.0, &[]).await);
    let base = format!("{TX}/{id}");

    // Status for the next N calls, and the faulted calls change nothing.
    env.fault(json!({"operation": "payment.captures.create", "status": 503, "count": 2}))
        .await;
    for _ in 0..2 {
        let r = env
            .post(
                &format!("{base}/captures"),
                &tok,
                json!({"gross_amount": 1}),
            )
            .await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(env.get(&base, &tok).await.body["amounts"]["captured"], 0.0);
    assert_eq!(
        env.post(
            &format!("{base}/captures"),
            &tok,
            json!({"gross_amount": 1})
        )
        .await
        .status,
        StatusCode::CREATED
    );
    assert_eq!(env.stats().await["requests"]["payment.captures.create"], 3);

    // 429 with Retry-After; faults apply before authentication too.
    env.fault(json!({"operation": "payment.transactions.get", "status": 429, "retry_after": 3, "count": 1})).await;
    let limited = finish(env.http.get(env.url(&base)).send().await.unwrap()).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers["retry-after"], "3");

    // Latency.
    env.fault(json!({"operation": "payment.transactions.get", "latency_ms": 200, "count": 1}))
        .await;
    let t0 = Instant::now();
    assert_eq!(env.get(&base, &tok).await.status, StatusCode::OK);
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t0.elapsed()
    );

    // Close the connection without an answer.
    env.fault(
        json!({"operation": "payment.transactions.get", "close_connection": true, "count": 1}),
    )
    .await;
    let dropped = env.http.get(env.url(&base)).bearer_auth(&tok).send().await;
    assert!(dropped.is_err(), "{dropped:?}");
    assert_eq!(
        env.get(&base, &tok).await.status,
        StatusCode::OK,
        "the next call is fine"
    );

    // The token endpoint can be faulted, and faults can be listed and cleared.
    env.fault(json!({"operation": "oauth.token", "status": 500}))
        .await;
    env.fault(json!({"operation": "*", "status": 502, "fraction": 1.0}))
        .await;
    let listed = env
        .control(reqwest::Method::GET, "/_sandbox/faults", None)
        .await;
    assert_eq!(listed.body["faults"].as_array().unwrap().len(), 2);
    let tr = env
        .token_request(json!({"client_id": "local-client", "client_secret": "local-sandbox-secret", "audience": env.cfg.audiences.payment, "grant_type": "client_credentials"}))
        .await;
    assert_eq!(tr.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(env.get(&base, &tok).await.status, StatusCode::BAD_GATEWAY);
    let cleared = env
        .control(reqwest::Method::DELETE, "/_sandbox/faults", None)
        .await;
    assert_eq!(cleared.status, StatusCode::OK);
    assert_eq!(env.get(&base, &tok).await.status, StatusCode::OK);

    // Invalid faults are refused.
    for bad in [
        json!({"operation": "payment.nope", "status": 503}),
        json!({"operation": "*", "status": 999}),
        json!({"operation": "*"}),
        json!({"operation": "*", "status": 503, "fraction": 2}),
        json!({"operation": "*", "status": 503, "colour": "red"}),
    ] {
        let r = env
            .control(reqwest::Method::POST, "/_sandbox/faults", Some(bad.clone()))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn faults_add_an_age_and_issue_tokens_for_a_given_expires_in() {
    let env = start(seeded()).await;
    let tok = env.payment_token().await;
    let id = tx_id(&env.authorize(&tok, 100.0, &[]).await);
    let base = format!("{TX}/{id}");

    // `age` rides on an executed call (and on a fault status).
    env.fault(json!({"operation": "payment.transactions.get", "age": u64::MAX, "count": 1}))
        .await;
    let aged = env.get(&base, &tok).await;
    assert_eq!(aged.status, StatusCode::OK);
    assert_eq!(aged.headers["age"], "18446744073709551615");
    assert!(!env.get(&base, &tok).await.headers.contains_key("age"));
    env.fault(
        json!({"operation": "payment.transactions.get", "status": 503, "age": 7, "count": 1}),
    )
    .await;
    let failed = env.get(&base, &tok).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(failed.headers["age"], "7");

    // `expires_in` issues a working token announced (and with `exp`) that long.
    env.fault(json!({"operation": "oauth.token", "expires_in": u64::MAX, "count": 1}))
        .await;
    let body = json!({"client_id": "local-client", "client_secret": "local-sandbox-secret",
                      "audience": env.cfg.audiences.payment, "grant_type": "client_credentials"});
    let long = env.token_request(body.clone()).await;
    assert_eq!(long.status, StatusCode::OK);
    assert_eq!(long.body["expires_in"], u64::MAX);
    let long_tok = long.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(env.get(&base, &long_tok).await.status, StatusCode::OK);
    assert_eq!(env.token_request(body).await.body["expires_in"], 1800);

    for bad in [
        json!({"operation": "payment.transactions.get", "expires_in": 60}),
        json!({"operation": "*", "expires_in": 60}),
        json!({"operation": "oauth.token", "expires_in": 60, "status": 503}),
        json!({"operation": "oauth.token", "expires_in": 60, "close_connection": true}),
    ] {
        let r = env
            .control(reqwest::Method::POST, "/_sandbox/faults", Some(bad.clone()))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn revoked_tokens_are_refused_and_new_ones_work() {
    let env = start(seeded()).await;
    let tok = env.payment_token().await;
    let path = format!("{TX}/AAAAAAAAAAAAAAAAAAAA");
    assert_eq!(env.get(&path, &tok).await.status, StatusCode::NOT_FOUND);
    let r = env
        .control(reqwest::Method::POST, "/_sandbox/tokens/revoke", None)
        .await;
    assert_eq!(r.body["revoked"], 1);
    let refused = env.get(&path, &tok).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.body["error_description"]
        .as_str()
        .unwrap()
        .contains("revoked"));
    let fresh = env.payment_token().await;
    assert_eq!(env.get(&path, &fresh).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn reset_clears_state_stats_faults_and_revocations() {
    let env = start(seeded()).await;
    let tok = env.payment_token().await;
    let first = tx_id(&env.authorize(&tok, 10.0, &[]).await);
    env.fault(json!({"operation": "hpp.sessions.create", "status": 500}))
        .await;
    env.control(reqwest::Method::POST, "/_sandbox/tokens/revoke", None)
        .await;
    let r = env
        .control(reqwest::Method::POST, "/_sandbox/reset", None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let stats = env.stats().await;
    assert_eq!(stats["requests_total"], 0);
    assert_eq!(stats["token_requests"], 0);
    assert_eq!(stats["requests"], json!({}));
    assert_eq!(
        env.control(reqwest::Method::GET, "/_sandbox/faults", None)
            .await
            .body["faults"],
        json!([])
    );
    // The revoked token works again, the transaction is gone, and the seeded ids start over.
    assert_eq!(
        env.get(&format!("{TX}/{first}"), &tok).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(tx_id(&env.authorize(&tok, 10.0, &[]).await), first);
}

#[tokio::test]
async fn seeded_sandboxes_generate_the_same_ids() {
    let a = start(seeded()).await;
    let b = start(seeded()).await;
    let ta = a.payment_token().await;
    let tb = b.payment_token().await;
    assert_eq!(
        tx_id(&a.authorize(&ta, 1.0, &[]).await),
        tx_id(&b.authorize(&tb, 1.0, &[]).await)
    );
    let unseeded = start(SandboxConfig::default()).await;
    let tu = unseeded.payment_token().await;
    assert_ne!(
        tx_id(&a.authorize(&ta, 1.0, &[]).await),
        tx_id(&unseeded.authorize(&tu, 1.0, &[]).await)
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_are_answered_but_not_counted() {
    let env = start(seeded()).await;
    let tok = env.payment_token().await;
    assert_eq!(env.get("/admin", &tok).await.status, StatusCode::NOT_FOUND);
    let wrong_method = env
        .call(
            reqwest::Method::DELETE,
            &format!("{TX}/AAAAAAAAAAAAAAAAAAAA"),
            &tok,
            None,
            &[],
        )
        .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        env.control(reqwest::Method::GET, "/_sandbox/nope", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(env.stats().await["requests_total"], 0);
}

#[tokio::test]
async fn serves_h2c_and_shuts_down() {
    let env = start(seeded()).await;
    let h2 = Client::builder().http2_prior_knowledge().build().unwrap();
    let r = h2.get(env.url("/_sandbox/stats")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let url = env.url("/_sandbox/stats");
    env.sb.shutdown().await.unwrap();
    assert!(Client::new().get(url).send().await.is_err());
}
