//! The token endpoint's answer (`token::http_fetch::parse_token_response`: the JSON body and the
//! lifetime rule, `expires_in` shortened to a JWT's `exp`), then that token through a
//! `TokenSource` on a paused clock, as the gateway would use it.
//!
//! Invariants: never panics, including in the source's arithmetic and its background
//! refresher; an accepted answer has a non-zero lifetime no longer than its `expires_in` and
//! keeps the token as sent; the source hands the token out while it lives and never once it
//! has expired.
#![no_main]

use std::{sync::Mutex, time::Duration};

use libfuzzer_sys::fuzz_target;
use ratepay_gateway::{
    config::TokenSettings,
    token::{
        http_fetch::parse_token_response, FetchError, FetchFuture, FetchToken, Fetched, TokenSource,
    },
};
use secrecy::ExposeSecret;

/// Answers once with the parsed token, then fails: a later valid token can only be the first.
struct Once(Mutex<Option<Fetched>>);

impl FetchToken for Once {
    fn fetch(&self) -> FetchFuture {
        let next = self.0.lock().unwrap().take();
        Box::pin(async move { next.ok_or(FetchError::Status(503)) })
    }
}

/// What tokio's clock can be moved by in one go without overflowing its own arithmetic.
const MAX_ADVANCE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fuzz_target!(|data: &[u8]| {
    let Ok(fetched) = parse_token_response(data) else {
        return;
    };
    // serde_json's typed parse skips unknown members without checking their escapes, and a
    // derived struct also reads an array by position (`["tok", 60]`): compare with a plain
    // parse only where there is one object to compare with.
    let token = fetched.access_token.expose_secret().to_owned();
    if let Ok(serde_json::Value::Object(sent)) = serde_json::from_slice(data) {
        assert_eq!(sent["access_token"].as_str(), Some(token.as_str()));
        let announced = sent["expires_in"]
            .as_u64()
            .expect("accepted without expires_in");
        assert!(fetched.expires_in <= Duration::from_secs(announced));
    }
    assert!(!fetched.expires_in.is_zero());

    let lifetime = fetched.expires_in;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let source = TokenSource::new(
            "aud".into(),
            Box::new(Once(Mutex::new(Some(fetched)))),
            TokenSettings::default(),
        );
        let first = source.bearer().await;
        let Ok(bearer) = first else {
            // Only a token that is not a header value is refused.
            assert!(http::HeaderValue::try_from(format!("Bearer {token}")).is_err());
            return;
        };
        assert_eq!(
            bearer.header.as_bytes(),
            format!("Bearer {token}").as_bytes()
        );
        assert!(source.expires_in().is_some_and(|left| left <= lifetime));
        // Let the background refresher run (its refresh fails) and the token age.
        let step = lifetime.min(MAX_ADVANCE);
        tokio::time::advance(step).await;
        tokio::task::yield_now().await;
        let later = source.bearer().await;
        if step >= lifetime {
            assert!(later.is_err(), "an expired token was handed out");
        } else if step + Duration::from_secs(2) < lifetime {
            assert_eq!(later.unwrap().generation, bearer.generation);
        }
    });
});
