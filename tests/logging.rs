//! Access tokens never reach the logs; their 8-hex fingerprint does.
//!
//! Uses [`capture`] (a *global* subscriber, see `common`).

mod common;

use common::*;
use http::Method;
use serde_json::json;
use wiremock::ResponseTemplate;

#[tokio::test]
async fn should_log_the_fingerprint_and_never_the_raw_token() {
    let logs = capture();
    let env = Env::start_with(|c| c.limits.max_token_bytes = 64).await;

    let good = "SECRETgood-Zq7Kx2Lw9Vb4Nm8Rt";
    let inactive = "SECRETinactive-Hy3Jd6Fs1Pa5";
    let as_down = "SECRETasdown-Wc8Eu2Io4Gk7";
    let echoed = "SECRETechoed-Tn5Bv9Qm3Xs6";
    let malformed = "SECRETmalformed-Ld2Ok7Cj4";
    let too_long = format!("SECRETtoolong-{}", "Ab9".repeat(30));

    env.allow(good, 1).await;
    env.answer(inactive, json!({"active": false}), 1).await;
    introspection_of(as_down)
        .respond_with(ResponseTemplate::new(500).set_body_string(format!("token {as_down} failed")))
        .mount(&env.auth)
        .await;
    // A broken AS (or a gateway in front of it) that echoes the token back in a
    // mistyped member: the parse error must not carry it into the logs.
    env.answer(echoed, json!({"active": echoed, "sub": echoed}), 1)
        .await;

    assert_eq!(env.get("/ok?x=1", good).await.status, 200);
    assert_eq!(env.get("/ok", good).await.status, 200, "cache hit");
    let req = request(Method::GET, &env.url("/ok-h2"))
        .header("authorization", format!("Bearer {good}"))
        .body(empty())
        .unwrap();
    assert_eq!(send(&env.h2c, req).await.status, 200);
    assert_eq!(env.get("/x", inactive).await.status, 401);
    assert_eq!(
        env.get("/x", inactive).await.status,
        401,
        "negative cache hit"
    );
    assert_eq!(env.get("/x", as_down).await.status, 503);
    assert_eq!(env.get("/x", echoed).await.status, 503);
    let r = env
        .get_with_auth("/x", &[&format!("Bearer {malformed},{malformed}")])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(env.get("/x", &too_long).await.status, 400);

    // No wait needed: the access line is written before the response is handed
    // back to hyper, so it is in the buffer by the time the client has its answer.
    let text = logs.text();

    for (name, token) in [
        ("good", good),
        ("inactive", inactive),
        ("as_down", as_down),
        ("echoed", echoed),
        ("malformed", malformed),
        ("too_long", too_long.as_str()),
    ] {
        assert!(
            !text.contains(token),
            "the raw {name} token is in the logs:\n{text}"
        );
    }
    assert!(
        !text.contains("SECRET"),
        "part of a raw token is in the logs:\n{text}"
    );

    for (token, status) in [
        (good, "200"),
        (inactive, "401"),
        (as_down, "503"),
        (echoed, "503"),
    ] {
        let fp = fingerprint(token);
        let access = |needle: &str, status: &str| {
            text.lines().any(|l| {
                l.contains("tokengate::access") && l.contains(needle) && l.contains(status)
            })
        };
        assert!(
            access(&format!("token=\"{fp}\""), &format!("status={status}")),
            "no text access line with fingerprint {fp} and status {status}:\n{text}"
        );
        assert!(
            access(
                &format!("\"token\":\"{fp}\""),
                &format!("\"status\":{status}")
            ),
            "no JSON access line with fingerprint {fp} and status {status}:\n{text}"
        );
    }
}

/// `log.access = false` drops the access line and nothing else: the request is
/// still served, and a gate with the default writes its line in the same log.
#[tokio::test]
async fn access_line_can_be_turned_off() {
    let logs = capture();
    let quiet = Env::start_with(|c| c.log.access = false).await;
    let loud = Env::start().await;
    quiet.allow("tok-quiet", 1).await;
    loud.allow("tok-loud", 1).await;

    assert_eq!(quiet.get("/quiet-path-9f2", "tok-quiet").await.status, 200);
    assert_eq!(
        quiet.get_with_auth("/quiet-denied-9f2", &[]).await.status,
        401
    );
    assert_eq!(loud.get("/loud-path-9f2", "tok-loud").await.status, 200);

    let text = logs.text();
    let access_for = |path: &str| {
        text.lines()
            .any(|l| l.contains("tokengate::access") && l.contains(path))
    };
    assert!(
        access_for("/loud-path-9f2"),
        "control line missing:\n{text}"
    );
    assert!(!access_for("/quiet-path-9f2"), "{text}");
    assert!(!access_for("/quiet-denied-9f2"), "{text}");
}
