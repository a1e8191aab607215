//! Token minting and verification (relais-auth): every `/rtc` connect and every
//! RoomService call verifies one JWT (HS256).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use relais_auth::{AccessToken, KeyProvider, TokenVerifier, VideoGrant};

fn token(c: &mut Criterion) {
    let keys =
        KeyProvider::from_map([("APIbench", "a-secret-of-thirty-two-characters-long")]).unwrap();
    let verifier = TokenVerifier::new(keys);
    let mint = || {
        AccessToken::new("APIbench", "a-secret-of-thirty-two-characters-long")
            .with_identity("participant-42")
            .with_name("Participant 42")
            .with_metadata("{\"role\":\"speaker\"}")
            .with_grant(VideoGrant {
                room_join: Some(true),
                room: "bench-room".into(),
                can_publish: Some(true),
                can_subscribe: Some(true),
                ..Default::default()
            })
            .to_jwt()
            .unwrap()
    };
    let jwt = mint();
    let mut g = c.benchmark_group("token");
    g.bench_function("mint", |b| b.iter(|| black_box(mint())));
    g.bench_function("verify", |b| {
        b.iter(|| black_box(verifier.verify(black_box(&jwt)).unwrap()))
    });
    let mut bad = jwt.clone();
    bad.pop();
    bad.push('A');
    g.bench_function("verify_bad_signature", |b| {
        b.iter(|| black_box(verifier.verify(black_box(&bad)).is_err()))
    });
    g.finish();
}

criterion_group!(benches, token);
criterion_main!(benches);
