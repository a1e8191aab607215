//! Unit tests for verification, minting and claim defaults.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::*;

const KEY: &str = "APIkey";
const SECRET: &str = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn verifier() -> TokenVerifier {
    TokenVerifier::new(KeyProvider::from_map([(KEY, SECRET), ("other", "othersecret")]).unwrap())
}

fn sign(payload: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        payload,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn raw(header: &Value, payload: &Value, sig: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        sig
    )
}

fn base(extra: Value) -> Value {
    let mut p = json!({"iss": KEY, "sub": "alice", "nbf": now() - 5, "exp": now() + 600});
    if let (Value::Object(p), Value::Object(e)) = (&mut p, extra) {
        p.extend(e);
    }
    p
}

#[test]
fn verifies_full_payload_exactly() {
    let payload = base(json!({
        "jti": "J1",
        "iat": now() - 5,
        "name": "Alice",
        "metadata": "{\"a\":1}",
        "attributes": {"hand": "raised", "x": ""},
        "kind": "agent",
        "kindDetails": ["cloud_agent", "forwarded"],
        "sha256": "abc=",
        "roomPreset": "preset1",
        "roomConfig": {"name": "r", "emptyTimeout": 10, "departure_timeout": "7",
                       "maxParticipants": 3, "agents": [{"agentName": "bot", "metadata": "m"}],
                       "egress": {"room": {"roomName": "r"}}},
        "video": {
            "roomCreate": true, "roomList": true, "roomRecord": true, "roomAdmin": true,
            "roomJoin": true, "room": "r", "canPublish": false, "canSubscribe": false,
            "canPublishData": true, "canPublishSources": ["camera", "screen_share"],
            "canUpdateOwnMetadata": true, "ingressAdmin": true, "hidden": true,
            "recorder": true, "agent": true, "canSubscribeMetrics": true,
            "canManageAgentSession": true, "destinationRoom": "r2"
        },
        "sip": {"admin": true, "call": true},
        "agent": {"admin": true, "simulationAdmin": true, "databaseAdmin": true, "dispatchAdmin": true},
        "inference": {"perform": true},
        "observability": {"write": true},
        "agentEndpoint": {"call": true}
    }));
    let claims = verifier().verify(&sign(&payload, SECRET)).unwrap();
    assert_eq!(serde_json::to_value(&claims).unwrap(), payload);
    assert_eq!(claims.identity(), "alice");
    let v = claims.video.as_ref().unwrap();
    assert!(!v.can_publish() && !v.can_subscribe() && v.can_publish_data());
    assert!(!v.can_publish_source("camera"));
    assert_eq!(
        claims.agent.as_ref().unwrap().extra["dispatchAdmin"],
        json!(true)
    );
    let rc = claims.room_configuration().unwrap().unwrap();
    assert_eq!(
        (
            rc.name.as_str(),
            rc.empty_timeout,
            rc.departure_timeout,
            rc.max_participants
        ),
        ("r", 10, 7, 3)
    );
    assert_eq!(rc.agents[0].agent_name, "bot");
    assert!(rc.extra.contains_key("egress"));
}

#[test]
fn grant_defaults() {
    let claims = verifier()
        .verify(&sign(
            &base(json!({"video": {"roomJoin": true, "room": "r"}})),
            SECRET,
        ))
        .unwrap();
    let v = claims.video.as_ref().unwrap();
    assert!(v.can_publish() && v.can_subscribe() && v.can_publish_data());
    assert!(!v.can_update_own_metadata() && !v.is_hidden() && !v.is_room_admin());
    assert!(v.is_room_join());
    assert!(v.can_publish_source("microphone"));
    assert!(claims.can_publish() && claims.can_subscribe() && claims.can_publish_data());

    // canPublishData follows canPublish when absent.
    let g: VideoGrant = serde_json::from_value(json!({"canPublish": false})).unwrap();
    assert!(!g.can_publish_data());
    let g: VideoGrant =
        serde_json::from_value(json!({"canPublish": false, "canPublishData": true})).unwrap();
    assert!(g.can_publish_data());
    // Empty canPublishSources = no restriction; non-empty restricts.
    let g: VideoGrant = serde_json::from_value(json!({"canPublishSources": []})).unwrap();
    assert!(g.can_publish_source("camera"));
    let g: VideoGrant =
        serde_json::from_value(json!({"canPublishSources": ["microphone"]})).unwrap();
    assert!(g.can_publish_source("microphone") && !g.can_publish_source("camera"));

    // No video grant at all: publish/subscribe default true, metadata false.
    let c = Claims::default();
    assert!(c.can_publish() && c.can_subscribe() && c.can_publish_data());
    assert!(!c.can_update_own_metadata());
}

#[test]
fn identity_falls_back_to_jti() {
    let mut p = base(json!({"sub": "", "jti": "from-jti"}));
    let c = verifier().verify(&sign(&p, SECRET)).unwrap();
    assert_eq!(c.identity(), "from-jti");
    p.as_object_mut().unwrap().remove("sub");
    let c = verifier().verify(&sign(&p, SECRET)).unwrap();
    assert_eq!(c.identity(), "from-jti");
}

#[test]
fn malformed() {
    for t in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.sig"] {
        assert!(
            matches!(verifier().verify(t), Err(AuthError::Malformed(_))),
            "{t}"
        );
    }
    // Header not JSON.
    let t = format!("{}.e30.x", URL_SAFE_NO_PAD.encode("nope"));
    assert!(matches!(
        verifier().verify(&t),
        Err(AuthError::Malformed(_))
    ));
    // Payload not an object.
    let t = raw(&json!({"alg": "HS256"}), &json!([1]), "x");
    assert!(matches!(
        verifier().verify(&t),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn wrong_algorithms() {
    let p = base(json!({}));
    let none = raw(&json!({"alg": "none", "typ": "JWT"}), &p, "");
    assert_eq!(
        verifier().verify(&none),
        Err(AuthError::WrongAlgorithm("none".into()))
    );
    let rs = raw(&json!({"alg": "RS256", "typ": "JWT"}), &p, "c2ln");
    let e = verifier().verify(&rs).unwrap_err();
    assert_eq!(e, AuthError::WrongAlgorithm("RS256".into()));
    assert!(e.to_string().contains("only HS256"));
    let hs512 = encode(
        &Header::new(Algorithm::HS512),
        &p,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        verifier().verify(&hs512),
        Err(AuthError::WrongAlgorithm("HS512".into()))
    );
}

#[test]
fn unknown_and_missing_key() {
    let t = sign(&base(json!({"iss": "nokey"})), SECRET);
    let e = verifier().verify(&t).unwrap_err();
    assert_eq!(e, AuthError::UnknownKey("nokey".into()));
    assert!(e.to_string().contains("invalid API key"));
    let mut p = base(json!({}));
    p.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        verifier().verify(&sign(&p, SECRET)),
        Err(AuthError::MissingIssuer)
    );
}

#[test]
fn bad_signature() {
    // Signed with the secret of another key.
    let t = sign(&base(json!({})), "othersecret");
    assert_eq!(verifier().verify(&t), Err(AuthError::BadSignature));
    // Tampered payload.
    let good = sign(&base(json!({})), SECRET);
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(base(json!({"sub": "mallory"})).to_string()),
        parts[2]
    );
    assert_eq!(verifier().verify(&forged), Err(AuthError::BadSignature));
}

#[test]
fn expiry_and_not_before() {
    let mut p = base(json!({}));
    p.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        verifier().verify(&sign(&p, SECRET)),
        Err(AuthError::MissingExpiry)
    );
    let expired = base(json!({"exp": now() - 120}));
    assert_eq!(
        verifier().verify(&sign(&expired, SECRET)),
        Err(AuthError::Expired)
    );
    // Within the 60 s leeway.
    let recently = base(json!({"exp": now() - 30}));
    assert!(verifier().verify(&sign(&recently, SECRET)).is_ok());
    let future = base(json!({"nbf": now() + 300}));
    assert_eq!(
        verifier().verify(&sign(&future, SECRET)),
        Err(AuthError::NotYetValid)
    );
    let soon = base(json!({"nbf": now() + 30}));
    assert!(verifier().verify(&sign(&soon, SECRET)).is_ok());
    let bad_exp = base(json!({"exp": "tomorrow"}));
    assert!(matches!(
        verifier().verify(&sign(&bad_exp, SECRET)),
        Err(AuthError::InvalidClaim { .. })
    ));
}

#[test]
fn unknown_grant_field() {
    let t = sign(
        &base(json!({"video": {"roomJoin": true, "room": "r", "canPublsh": false}})),
        SECRET,
    );
    let e = verifier().verify(&t).unwrap_err();
    assert_eq!(e, AuthError::UnknownGrantField("canPublsh".into()));
    assert!(e.to_string().contains("canPublsh"));
    // Direct deserialisation is strict too.
    assert!(serde_json::from_value::<VideoGrant>(json!({"bogus": 1})).is_err());
    assert_eq!(
        VideoGrant::from_json(&json!({"bogus": 1})),
        Err(AuthError::UnknownGrantField("bogus".into()))
    );
    // Unknown members elsewhere are tolerated.
    let t = sign(
        &base(json!({"newClaim": 1, "sip": {"admin": true, "future": 2}})),
        SECRET,
    );
    let c = verifier().verify(&t).unwrap();
    assert_eq!(c.extra["newClaim"], json!(1));
}

#[test]
fn wrong_claim_types_name_the_claim() {
    let t = sign(&base(json!({"video": {"canPublish": "yes"}})), SECRET);
    match verifier().verify(&t) {
        Err(AuthError::InvalidClaim { claim, .. }) => assert_eq!(claim, "video"),
        other => panic!("{other:?}"),
    }
    let t = sign(&base(json!({"attributes": {"a": 1}})), SECRET);
    match verifier().verify(&t) {
        Err(AuthError::InvalidClaim { claim, .. }) => assert_eq!(claim, "attributes"),
        other => panic!("{other:?}"),
    }
    let t = sign(&base(json!({"video": []})), SECRET);
    assert!(matches!(
        verifier().verify(&t),
        Err(AuthError::InvalidClaim { .. })
    ));
}

#[test]
fn mint_and_verify_round_trip() {
    let grant = VideoGrant {
        room_admin: Some(true),
        can_publish: Some(false),
        can_publish_sources: Some(vec!["camera".into()]),
        ..VideoGrant::join("room1")
    };
    let t = AccessToken::new(KEY, SECRET)
        .with_identity("bob")
        .with_name("Bob")
        .with_ttl(Duration::from_secs(120))
        .with_grant(grant.clone())
        .with_metadata("meta")
        .with_attributes([("k", "v")])
        .with_kind("standard")
        .with_sha256("aGFzaA==")
        .with_room_config(json!({"maxParticipants": 2}))
        .to_jwt()
        .unwrap();
    let c = verifier().verify(&t).unwrap();
    assert_eq!(c.identity(), "bob");
    assert_eq!(c.iss.as_deref(), Some(KEY));
    assert_eq!(c.name.as_deref(), Some("Bob"));
    assert_eq!(c.video.as_ref(), Some(&grant));
    assert_eq!(c.metadata.as_deref(), Some("meta"));
    assert_eq!(c.attributes.as_ref().unwrap()["k"], "v");
    assert_eq!(c.kind.as_deref(), Some("standard"));
    assert_eq!(c.sha256.as_deref(), Some("aGFzaA=="));
    let exp = c.exp.unwrap();
    assert!(exp >= now() + 110 && exp <= now() + 130);
    assert!(c.iat.is_some() && c.nbf.is_some());

    // No identity: no `sub` at all (webhook tokens).
    let t = AccessToken::new(KEY, SECRET).to_jwt().unwrap();
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(t.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(payload.get("sub").is_none());
    assert_eq!(
        AccessToken::new(KEY, "").to_jwt(),
        Err(AuthError::Signing("API secret is empty".into()))
    );
}

#[test]
fn default_ttl_is_six_hours() {
    let t = AccessToken::new(KEY, SECRET)
        .with_identity("x")
        .to_jwt()
        .unwrap();
    let c = verifier().verify(&t).unwrap();
    assert_eq!(c.exp.unwrap() - c.nbf.unwrap(), 6 * 3600);
}

#[test]
fn room_config_as_node_writes_it() {
    // protobuf-es (Node SDK) writes every member, enums as names, maps as objects.
    let c = Claims {
        room_config: Some(json!({"name":"n","emptyTimeout":0,"departureTimeout":0,
            "maxParticipants":0,"minPlayoutDelay":0,"maxPlayoutDelay":0,"syncStreams":false,
            "agents":[{"agentName":"a","metadata":"","restartPolicy":"JRP_ON_FAILURE",
            "deployment":"","attributes":{}}],"metadata":"","tags":{}})),
        ..Claims::default()
    };
    let rc = c.room_configuration().unwrap().unwrap();
    assert_eq!(rc.name, "n");
    assert_eq!(rc.agents[0].agent_name, "a");
    // snake_case (Go/proto field names) is accepted too.
    let c = Claims {
        room_config: Some(json!({"empty_timeout": 5, "max_participants": "7",
            "agents": [{"agent_name": "b"}]})),
        ..Claims::default()
    };
    let rc = c.room_configuration().unwrap().unwrap();
    assert_eq!((rc.empty_timeout, rc.max_participants), (5, 7));
    assert_eq!(rc.agents[0].agent_name, "b");
    let bad = Claims {
        room_config: Some(json!({"emptyTimeout": -1})),
        ..Claims::default()
    };
    assert!(matches!(
        bad.room_configuration(),
        Err(AuthError::InvalidClaim { .. })
    ));
}

#[test]
fn fractional_numeric_dates_are_accepted() {
    let p = base(json!({"exp": (now() + 600) as f64 + 0.5, "iat": 1.5}));
    let c = verifier().verify(&sign(&p, SECRET)).unwrap();
    let exp = c.exp.unwrap();
    assert!(exp >= now() + 598 && exp <= now() + 601, "{exp}");
    assert_eq!(c.iat, Some(1));
}
